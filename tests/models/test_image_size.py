"""``encoder.image_size``: which sizes the config accepts (and the errors naming the choices), the
grid and preprocessing that follow at build time, the feature-cache key, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from PIL import Image

from captionkit.checkpoint import load_checkpoint, save_checkpoint
from captionkit.config import ENCODER_SIZES, IMAGE_SIZES, Config, EncoderConfig, load_config
from captionkit.data.features import INDEX, FeatureStore, encoder_key, extract_features
from captionkit.data.shapes import read_shapes
from captionkit.data.vocab import Vocabulary
from captionkit.errors import CaptionKitError, ConfigError
from captionkit.models.captioner import build_model
from captionkit.models.encoders import ENCODERS, build_encoder, encoder_info

RESIZABLE = sorted(n for n, (_, stride) in ENCODER_SIZES.items() if stride)
FIXED = sorted(n for n, (_, stride) in ENCODER_SIZES.items() if not stride)


def _lite0(size: int | None, **kw) -> EncoderConfig:
    return EncoderConfig(name="efficientnet_lite0", image_size=size, **kw)


# --- config validation ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [None, 224, 64, 288, 320, 384, 1024])
def test_lite0_sizes_the_config_accepts(size):
    assert _lite0(size).image_size == size


def test_every_encoder_accepts_its_native_size_and_lite2_its_multiples():
    for name, (native, _) in ENCODER_SIZES.items():
        assert EncoderConfig(name=name, image_size=native).image_size == native
    assert EncoderConfig(name="efficientnet_lite2", image_size=384).image_size == 384


@pytest.mark.parametrize(("size", "choices"), [
    (300, "a multiple of its stride 32 from 64 to 1024 (e.g. 288 or 320)"),
    (32, "(e.g. 64)"),
    (2048, "(e.g. 1024)"),
    (0, "(e.g. 64)"),
])
def test_a_size_off_the_stride_or_range_names_the_choices(size, choices):
    with pytest.raises(ConfigError) as err:
        _lite0(size)
    msg = str(err.value)
    assert msg.startswith(f"encoder.image_size {size} does not fit efficientnet_lite0: choose "
                          "its native 224, or ")
    assert choices in msg and "grid = size / 32" in msg


@pytest.mark.parametrize("name", FIXED)
def test_fixed_size_encoders_take_only_their_native_size(name):
    native = ENCODER_SIZES[name][0]
    with pytest.raises(ConfigError, match=f"{name}: it takes only its native {native} px "
                       r"\(leave encoder.image_size unset\)"):
        EncoderConfig(name=name, image_size=native + 32)


@pytest.mark.parametrize("bad", ["320", 320.0, True])
def test_a_size_that_is_not_an_int_is_refused(bad):
    with pytest.raises(ConfigError, match="encoder.image_size must be"):
        _lite0(bad)
    with pytest.raises(ConfigError, match="encoder.image_size must be"):
        EncoderConfig(name="some_plugin_encoder", image_size=bad)


def test_the_error_comes_at_config_load_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"encoder": {"name": "efficientnet_lite0", "image_size": 330}}))
    with pytest.raises(ConfigError, match=r"c.yaml: encoder.image_size 330 does not fit .*e.g. "
                       r"320 or 352"):
        load_config(path)
    with pytest.raises(ConfigError, match="shapes_cnn: it takes only its native 96"):
        load_config(None, ["encoder.image_size=128"])
    cfg = load_config(None, ["encoder.name=efficientnet_lite2", "encoder.image_size=384"])
    assert cfg.encoder.image_size == 384
    assert load_config(None).encoder.image_size is None  # the default: native


def test_a_recipe_stage_size_is_checked_too():
    with pytest.raises(ConfigError, match=r"train.stages\[0\] .*image_size 100 does not fit"):
        Config().override(["encoder.name=efficientnet_lite0",
                           "train.stages=[{stage: xe, epochs: 1, encoder.image_size: 100}]"])


def test_the_size_range_is_whole_strides():
    low, high = IMAGE_SIZES
    assert low % 32 == 0 and high % 32 == 0 and low < 224 < high


# --- the built encoder ---------------------------------------------------------------------


def test_lite0_at_320_has_a_10x10_grid():
    enc = build_encoder(_lite0(320, trainable=False))
    assert enc.grid == (10, 10) and enc.num_locations == 100 and enc.preprocess.size == 320
    assert enc.preprocess.mean == enc.preprocess.std == (0.5, 0.5, 0.5)  # only the size moves
    x = enc.preprocess(Image.new("RGB", (500, 375), (120, 80, 40)))  # (3, 320, 320)
    assert x.shape == (3, 320, 320)
    with torch.no_grad():
        out = enc(x[None])  # (1, N, D)
    assert out.shape == (1, 100, 1280)
    native = build_encoder(_lite0(None))
    assert native.grid == (7, 7) and native.preprocess.size == 224
    assert build_encoder(_lite0(224)).grid == (7, 7)


@pytest.mark.parametrize("name", RESIZABLE)
def test_every_resizable_encoder_runs_at_the_grid_its_stride_gives(name):
    """The grid ``EncoderInfo.grid_at`` computes (size / stride) is the one the network makes."""
    info = encoder_info(name)
    size = 96
    enc = build_encoder(EncoderConfig(name=name, image_size=size)).eval()
    assert enc.grid == info.grid_at(size) == (size // info.stride,) * 2 == (3, 3)
    assert (enc.preprocess.mean, enc.preprocess.std) == (info.mean, info.std)
    with torch.no_grad():
        out = enc(torch.randn(1, 3, size, size))  # (1, N, D)
    assert out.shape == (1, 9, info.out_dim)


def test_lite2_at_384_has_a_12x12_grid_and_its_native_9x9():
    assert encoder_info("efficientnet_lite2").grid_at(384) == (12, 12)
    assert encoder_info("efficientnet_lite2").grid_at(None) == (9, 9)
    enc = build_encoder(EncoderConfig(name="efficientnet_lite2", image_size=384)).eval()
    with torch.no_grad():
        assert enc(torch.randn(1, 3, 384, 384)).shape == (1, 144, 1280)  # (B, N, D)


def test_learned_positions_cannot_change_their_grid():
    enc = ENCODERS.get("shapes_cnn")()
    with pytest.raises(CaptionKitError, match="learned positions for its \\(6, 6\\) grid"):
        enc.set_image_size(128, (8, 8))
    with pytest.raises(CaptionKitError, match="no grid at 128px"):
        encoder_info("shapes_cnn").grid_at(128)


# --- feature caches ------------------------------------------------------------------------


def test_the_cache_key_includes_the_image_size():
    a, b = build_encoder(_lite0(224)), build_encoder(_lite0(320))
    b.load_state_dict(a.state_dict())  # same weights: only the size differs
    ka, kb = encoder_key(a), encoder_key(b)
    assert (ka["image_size"], kb["image_size"]) == (224, 320)
    assert ka["weights_sha256"] == kb["weights_sha256"] and ka != kb
    assert (ka["grid"], kb["grid"]) == ([7, 7], [10, 10])


def test_a_cache_extracted_at_one_size_is_refused_at_another(shapes_root, tmp_path):
    records = read_shapes(shapes_root)[:4]
    torch.manual_seed(0)
    small = build_encoder(_lite0(64, trainable=False)).eval()
    extract_features(records, small, tmp_path / "c", 4, 0, progress=False)
    big = build_encoder(_lite0(96, trainable=False)).eval()
    big.load_state_dict(small.state_dict())
    with pytest.raises(CaptionKitError, match="image_size: cache has 64, expected 96"):
        FeatureStore(tmp_path / "c", encoder_key(big))
    assert FeatureStore(tmp_path / "c", encoder_key(small)).shape == (4, 4, 1280)
    # A cache indexed before the key had image_size: its preprocessing's size stands for it.
    index = json.loads((tmp_path / "c" / INDEX).read_text())
    del index["key"]["image_size"]
    (tmp_path / "c" / INDEX).write_text(json.dumps(index))
    assert FeatureStore(tmp_path / "c", encoder_key(small)).shape == (4, 4, 1280)
    with pytest.raises(CaptionKitError, match="image_size: cache has 64, expected 96"):
        FeatureStore(tmp_path / "c", encoder_key(big))


# --- checkpoints ---------------------------------------------------------------------------


def _tiny(size: int | None) -> Config:
    over = ["encoder.name=efficientnet_lite0", "encoder.trainable=false", "decoder.embed_dim=8",
            "decoder.hidden_dim=16", "decoder.attention_dim=8"]
    return Config().override(over + ([f"encoder.image_size={size}"] if size else []))


def test_a_checkpoint_records_the_size_and_rebuilds_at_it(tmp_path):
    import captionkit

    vocab = Vocabulary.build(["a dog", "a cat"])
    torch.manual_seed(0)
    cfg = _tiny(320)
    path = save_checkpoint(tmp_path / "ckpt", build_model(cfg, len(vocab)), cfg, vocab)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["config"]["encoder"]["image_size"] == 320
    model, loaded, _, _ = load_checkpoint(path)
    assert loaded.encoder.image_size == 320 and model.encoder.grid == (10, 10)
    assert model.encoder.preprocess.size == 320
    captioner = captionkit.load(path)
    assert captioner.preprocess.size == 320 and tuple(captioner.grid) == (10, 10)


def test_an_old_checkpoint_without_the_size_loads_at_the_native_size(tmp_path):
    vocab = Vocabulary.build(["a dog"])
    torch.manual_seed(0)
    cfg = _tiny(None)
    path = save_checkpoint(tmp_path / "old", build_model(cfg, len(vocab)), cfg, vocab)
    meta = json.loads((path / "meta.json").read_text())
    del meta["config"]["encoder"]["image_size"]  # as captionkit wrote it before the field
    (path / "meta.json").write_text(json.dumps(meta))
    model, loaded, _, _ = load_checkpoint(path)
    assert loaded.encoder.image_size is None
    assert model.encoder.grid == (7, 7) and model.encoder.preprocess.size == 224
