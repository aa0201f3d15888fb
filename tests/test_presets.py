"""Every preset in configs/ loads, validates, round-trips and names registered parts; the two seed
configurations from our users' starting point train from their presets."""

from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from captionkit.config import Config, load_config
from captionkit.data import DATASETS
from captionkit.errors import UnknownNameError
from captionkit.models.decoders import DECODERS
from captionkit.models.encoders import ENCODERS
from captionkit.train.fit import fit

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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


PRESETS = sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def test_the_presets_are_found():
    assert "shapes_demo" in PRESETS and len(PRESETS) >= 6


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
