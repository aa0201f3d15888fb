"""The two seed configurations from our users' starting point train from their presets."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from captionkit.config import load_config
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


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_every_preset_loads_and_names_registered_parts(preset):
    from captionkit.train.fit import check_names

    check_names(load_config(CONFIGS / f"{preset}.yaml"))


def test_transformer_preset_builds_and_steps():
    from captionkit.models.captioner import build_model

    cfg = load_config(CONFIGS / "flickr8k_lite0_transformer.yaml", ["encoder.pretrained=false"])
    model = build_model(cfg, 50).eval()
    feats = torch.randn(2, 49, 1280)
    tokens = torch.randint(4, 50, (3, 6))
    logits, alphas = model.decoder(feats, tokens, torch.tensor([0, 1, 1]))
    assert logits.shape == (3, 6, 50) and alphas.shape == (3, 6, 49)
