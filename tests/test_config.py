import dataclasses
from pathlib import Path

import pytest
import yaml

from captionkit import config as C
from captionkit.config import (
    Config,
    DataConfig,
    DecoderConfig,
    EncoderConfig,
    TrainConfig,
    load_config,
)
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


SECTIONS = {"data": DataConfig, "encoder": EncoderConfig, "decoder": DecoderConfig,
            "train": TrainConfig}
CHOICES = [  # every choice field, its allowed values, and a value outside them
    ("train.stage", C.STAGES, "bogus"),
    ("train.fast_path", C.FAST_PATHS, "maybe"),
    ("train.lr_schedule", C.LR_SCHEDULES, "zigzag"),
    ("train.scst_baseline", C.SCST_BASELINES, "max"),
    ("train.fast_compile_mode", C.COMPILE_MODES, "reduce-overhead"),
    ("train.select_metric", C.SELECT_METRICS, "SPIDEr"),
    ("train.device", ("auto", "cpu", "cuda", "cuda:N", "mps"), "gpu"),
]


def _construct(key: str, value):
    """Build the field's section directly, as code (not a config file) would."""
    section, name = key.split(".")
    return SECTIONS[section](**{name: value})


@pytest.mark.parametrize(("key", "allowed", "bad"), CHOICES, ids=[c[0] for c in CHOICES])
def test_bad_choice_names_the_field_and_every_allowed_value(key, allowed, bad):
    with pytest.raises(ConfigError) as info:
        Config().override([f"{key}={bad}"])
    msg = str(info.value)
    assert key in msg and repr(bad) in msg
    for value in allowed:
        assert value in msg, value


@pytest.mark.parametrize(("key", "allowed", "bad"), CHOICES, ids=[c[0] for c in CHOICES])
def test_every_allowed_choice_is_accepted(key, allowed, bad):
    for value in allowed:
        value = value.replace("cuda:N", "cuda:1")
        assert getattr(_construct(key, value), key.split(".")[1]) == value


def test_choice_tuples_match_what_the_code_offers():
    from captionkit.metrics import corpus_bleu_cider

    scores = corpus_bleu_cider({"a": ["a dog runs"], "b": ["a cat sits"]},
                               {"a": "a dog runs", "b": "a cat"})
    assert set(C.SELECT_METRICS) == set(scores)
    assert Config().train.select_metric in C.SELECT_METRICS


RANGES = [  # a field, the worst value it still accepts, and the nearest one it refuses
    ("train.epochs", 1, 0), ("train.batch_size", 1, 0), ("train.max_steps", 0, -1),
    ("train.max_steps", None, -1), ("train.fast_hoist_images", 0, -1),
    ("train.scst_xe_weight", 0.0, -0.1), ("train.scst_samples", 1, 0),
    ("train.checkpoint_every", 0, -1), ("train.patience", 0, -1), ("train.bucket_pool", 0, -1),
    ("train.warmup_steps", 0, -1), ("train.grad_clip", 0.0, -1.0), ("train.lr", 0.0, -1e-9),
    ("train.encoder_lr", 0.0, -1e-3), ("train.weight_decay", 0.0, -0.1),
    ("train.alpha_c", 0.0, -1.0), ("train.eval_max_len", 1, 0), ("train.grad_clip", 5.0, "nan"),
    ("decoder.dropout", 0.0, -0.1), ("decoder.dropout", 0.99, 1.0),
    ("decoder.embed_dim", 1, 0), ("decoder.hidden_dim", 1, 0), ("decoder.attention_dim", 1, 0),
    ("decoder.num_layers", 1, 0), ("decoder.num_heads", 1, 0),
    ("encoder.finetune_blocks", 0, -1),
    ("data.min_freq", 1, 0), ("data.max_len", 1, 0), ("data.num_workers", 0, -1),
]


@pytest.mark.parametrize(("key", "ok", "bad"), RANGES, ids=[f"{r[0]}={r[2]}" for r in RANGES])
def test_numeric_range_names_the_field(key, ok, bad):
    assert Config().override([f"{key}={'null' if ok is None else ok}"])
    bad = float(bad) if bad == "nan" else bad
    for build in (lambda: Config().override([f"{key}={bad}"]), lambda: _construct(key, bad)):
        with pytest.raises(ConfigError, match=rf"^{key} must be "):
            build()


def test_wrong_types_are_refused_by_direct_construction_too():
    with pytest.raises(ConfigError, match="train.epochs must be a number"):
        TrainConfig(epochs="3")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="train.stage"):
        TrainConfig(stage=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="train must be a TrainConfig"):
        Config(train={"epochs": 3})  # type: ignore[arg-type]


def test_every_construction_path_validates(tmp_path):
    Config(), Config.from_dict(None), Config.from_dict(Config().to_dict())  # the defaults pass
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"train": {"stage": "bogus"}}))
    paths = {
        "from_dict": lambda: Config.from_dict({"train": {"stage": "bogus"}}),
        "override": lambda: Config().override(["train.stage=bogus"]),
        "load_config": lambda: load_config(p),
        "load_config overrides": lambda: load_config(None, ["train.stage=bogus"]),
        "direct": lambda: TrainConfig(stage="bogus"),
        "replace": lambda: dataclasses.replace(Config().train, stage="bogus"),
        "nested": lambda: Config(train=TrainConfig(stage="bogus")),
    }
    for how, build in paths.items():
        with pytest.raises(ConfigError, match="train.stage") as info:
            build()
        assert "xe, scst" in str(info.value), how
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown train\.stage"):
        load_config(p)


def test_the_suites_own_overrides_validate():
    """What the rest of the suite sets (fixtures, smoke runs) is inside the ranges."""
    Config().override(["train.max_steps=1", "train.epochs=2", "decoder.dropout=0.0",
                          "train.checkpoint_every=1", "train.scst_samples=2",
                          "train.scst_baseline=mean", "train.fast_path=always",
                          "train.fast_hoist_images=64", "train.device=cuda", "train.patience=2",
                          "train.fast_compile_mode=max-autotune-no-cudagraphs"])
