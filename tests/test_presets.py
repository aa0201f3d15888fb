"""Every preset in configs/ loads, validates, round-trips and names registered parts; the two seed
configurations from our users' starting point train from their presets; a preset is found by
name from any folder."""

from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from captionkit.config import PRESET_DIR, Config, list_presets, load_config
from captionkit.data import DATASETS
from captionkit.errors import ConfigError, UnknownNameError
from captionkit.models.decoders import DECODERS
from captionkit.models.encoders import ENCODERS
from captionkit.train.fit import fit

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = PRESET_DIR  # what captionkit reads (and the wheel carries)


@pytest.fixture()
def tiny_csv(tmp_path):
    rng = torch.Generator().manual_seed(0)
    rows = ["image,caption,split"]
    for i, split in enumerate(["train"] * 4 + ["dev"] * 2):
        px = (torch.rand(40, 48, 3, generator=rng) * 255).byte().numpy()
        Image.fromarray(px).save(tmp_path / f"im{i}.jpg")
        rows += [f"im{i}.jpg,a dog runs on the grass,{split}", f"im{i}.jpg,a brown dog,{split}"]
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


@pytest.mark.parametrize("preset", ["tf_tutorial_inceptionv3_gru", "densenet121_lstm"])
def test_seed_configuration_trains_a_few_steps(preset, tiny_csv, tmp_path):
    torch.set_num_threads(1)
    cfg = load_config(CONFIGS / f"{preset}.yaml", [
        "data.dataset=csv", f"data.root={tiny_csv}", "data.min_freq=1", "data.num_workers=0",
        "encoder.pretrained=false", "train.batch_size=2", "train.max_steps=2",
        f"train.out_dir={tmp_path / 'run'}", "train.eval_max_len=3",
    ])
    result = fit(cfg, progress=False)
    assert result.history[0]["step"] == 2
    assert torch.isfinite(torch.tensor(result.history[0]["loss"]))
    assert (result.best_checkpoint / "model.safetensors").is_file()


PRESETS = list_presets()


def test_the_presets_are_found():
    assert "shapes_demo" in PRESETS and len(PRESETS) >= 6


def test_the_package_presets_are_the_repositorys_one_copy():
    """captionkit/configs links to configs/: one copy of each YAML, nothing to keep in sync."""
    assert PRESET_DIR.resolve() == REPO_CONFIGS.resolve()
    assert sorted(p.stem for p in REPO_CONFIGS.glob("*.yaml")) == PRESETS


@pytest.mark.parametrize("spelling", ["{}", "{}.yaml", "configs/{}.yaml", "./configs/{}.yaml"])
def test_a_preset_is_found_by_name_from_any_folder(spelling, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    name = "flickr8k_lite0_lstm"
    assert load_config(spelling.format(name)) == load_config(REPO_CONFIGS / f"{name}.yaml")
    assert load_config(spelling.format(name)) != Config()  # really the preset, not defaults


def test_a_real_file_comes_before_the_preset_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    mine = Config().override(["train.epochs=3"])
    mine.save(tmp_path / "configs" / "shapes_demo.yaml")
    mine.override(["train.epochs=4"]).save(tmp_path / "shapes_demo")
    assert load_config("configs/shapes_demo.yaml").train.epochs == 3
    assert load_config("shapes_demo").train.epochs == 4
    assert load_config("shapes_demo.yaml").train.epochs == Config().train.epochs  # the preset


def test_an_unknown_preset_lists_the_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config("flickr8k_lite0_lsmt")
    msg = str(info.value)
    assert msg.startswith(f"flickr8k_lite0_lsmt: config file not found (looked for "
                          f"{tmp_path / 'flickr8k_lite0_lsmt'}) and no preset is called")
    assert "did you mean flickr8k_lite0_lstm?" in msg
    assert "the presets are: " + ", ".join(PRESETS) in msg
    with pytest.raises(ConfigError, match="no preset is called 'nope'; the presets are: "):
        load_config("configs/nope.yaml")
    with pytest.raises(ConfigError, match=r"looked for /nowhere/shapes_demo\.yaml\); did you "
                       "mean shapes_demo"):  # a path elsewhere is not a preset's name, but...
        load_config("/nowhere/shapes_demo.yaml")


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads_validates_and_round_trips(preset):
    cfg = load_config(CONFIGS / f"{preset}.yaml")  # validated while it is built
    assert isinstance(cfg, Config)
    assert Config.from_dict(cfg.to_dict()) == cfg
    raw = yaml.safe_load((CONFIGS / f"{preset}.yaml").read_text())
    default = Config().to_dict()
    for section, values in cfg.to_dict().items():  # the file's values, the defaults elsewhere
        for key, value in values.items():
            assert value == raw.get(section, {}).get(key, default[section][key]), (section, key)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads_and_names_registered_parts(preset):
    from captionkit.train.fit import check_names

    cfg = load_config(CONFIGS / f"{preset}.yaml")
    assert cfg.data.dataset in DATASETS
    assert cfg.encoder.name in ENCODERS
    assert cfg.decoder.name in DECODERS
    assert check_names(cfg) is None  # what fit checks first passes...
    with pytest.raises(UnknownNameError, match="unknown encoder 'nope'"):
        check_names(cfg.override(["encoder.name=nope"]))  # ...and is not a no-op
    if cfg.data.feature_cache is not None:  # fit trains from a cache only with a frozen encoder
        assert not cfg.encoder.trainable and cfg.encoder.finetune_blocks == 0


def test_transformer_preset_builds_and_steps():
    from captionkit.models.captioner import build_model

    cfg = load_config(CONFIGS / "flickr8k_lite0_transformer.yaml", ["encoder.pretrained=false"])
    model = build_model(cfg, 50).eval()
    feats = torch.randn(2, 49, 1280)
    tokens = torch.randint(4, 50, (3, 6))
    logits, alphas = model.decoder(feats, tokens, torch.tensor([0, 1, 1]))
    assert logits.shape == (3, 6, 50) and alphas.shape == (3, 6, 49)
