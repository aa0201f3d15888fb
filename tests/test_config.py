from pathlib import Path

import pytest
import yaml

from captionkit.config import Config, load_config
from captionkit.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = Config()
    cfg.save(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_overrides_parse_types():
    cfg = Config().override(["train.lr=1e-3", "decoder.name=gru", "encoder.trainable=false",
                             "train.max_steps=5", "encoder.weights=null"])
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.decoder.name == "gru" and cfg.encoder.trainable is False
    assert cfg.train.max_steps == 5 and cfg.encoder.weights is None


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        Config().train.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("bad", ["train.nope=1", "lr=1", "train.lr", "train.lr=abc",
                                 "encoder.trainable=3"])
def test_bad_overrides_are_refused(bad):
    with pytest.raises(ConfigError):
        Config().override([bad])


def test_unknown_yaml_field_names_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"train": {"lrr": 1}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.lrr"):
        load_config(p)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/x.yaml")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_preset_loads(path):
    cfg = load_config(path)
    assert cfg.encoder.name and cfg.decoder.name


def test_shapes_demo_preset_is_the_default():
    assert load_config(CONFIGS / "shapes_demo.yaml") == Config()
