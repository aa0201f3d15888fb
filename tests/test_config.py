import dataclasses
import os

import pytest
import yaml

from captionkit import config as C
from captionkit.config import (
    Config,
    DataConfig,
    DecoderConfig,
    EncoderConfig,
    TrainConfig,
    list_presets,
    load_config,
)
from captionkit.errors import ConfigError


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


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads(name):
    cfg = load_config(name)
    assert cfg.encoder.name and cfg.decoder.name


def test_shapes_demo_preset_is_the_default():
    assert load_config("shapes_demo") == Config()


HINTS = [  # an unknown key, and the key the error should suggest
    ("train.learning_rate", "train.lr"), ("train.lrr", "train.lr"),
    ("train.warmup", "train.warmup_steps"), ("decoder.hiden_dim", "decoder.hidden_dim"),
    ("train.num_workers", "data.num_workers"),  # the field, in its own section
]


@pytest.mark.parametrize(("key", "meant"), HINTS, ids=[h[0] for h in HINTS])
def test_an_unknown_field_suggests_the_meant_one_and_lists_the_section(key, meant):
    with pytest.raises(ConfigError) as info:
        Config().override([f"{key}=1"])
    msg = str(info.value)
    section = key.split(".")[0]
    assert f"no field {key!r} (did you mean {meant}?)" in msg
    assert msg.endswith(f"{section}'s fields are: " + ", ".join(Config().to_dict()[section]))


def test_an_unknown_field_without_a_close_name_lists_the_section_only():
    with pytest.raises(ConfigError, match=r"no field 'train.zzz'; train's fields are: epochs,") as e:
        Config().override(["train.zzz=1"])
    assert "did you mean" not in str(e.value)


@pytest.mark.parametrize(("item", "meant"), [("trian.lr=1", "train.lr"), ("trian.foo=1", "train"),
                                             ("model.hidden_dim=8", "decoder.hidden_dim")])
def test_an_unknown_section_suggests_one_and_lists_the_sections(item, meant):
    section = item.split(".")[0]
    with pytest.raises(ConfigError) as info:
        Config().override([item])
    assert str(info.value) == (f"override {item!r}: no section {section!r} (did you mean "
                               f"{meant}?); the sections are: data, encoder, decoder, train")


def test_unknown_yaml_fields_and_sections_get_the_same_hints(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"train": {"learning_rate": 1e-3, "epochs": 2}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown field\(s\) train\.learning_rate "
                       r"\(did you mean train\.lr\?\); train's fields are: epochs, batch_size"):
        load_config(p)
    p.write_text(yaml.safe_dump({"trian": {"lr": 1e-3}}))
    with pytest.raises(ConfigError, match=r"unknown section\(s\) trian \(did you mean train\?\); "
                       "the sections are: data, encoder, decoder, train"):
        load_config(p)


def test_absolute_paths_resolve_the_data_paths_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config().override(["data.root=f8k", "data.feature_cache=cache/lite0",
                             "train.out_dir=runs/x"])
    done = cfg.absolute_paths()
    assert done.data.root == str(tmp_path / "f8k")
    assert done.data.feature_cache == str(tmp_path / "cache" / "lite0")
    assert done.train == cfg.train and done.absolute_paths() == done  # idempotent
    assert Config().absolute_paths().data.feature_cache is None  # unset stays unset
    home = Config().override(["data.root=~/f8k"]).absolute_paths().data.root
    assert home == os.path.join(os.path.expanduser("~"), "f8k")


def test_diff_compares_data_paths_as_the_folders_they_name(tmp_path, monkeypatch):
    """A run folder stores absolute data paths; resuming it with the same relative
    --data-dir is the same config, another folder is not."""
    monkeypatch.chdir(tmp_path)
    saved = Config().override(["data.root=f8k"]).absolute_paths()
    assert saved.diff(Config().override(["data.root=f8k"])) == []
    assert saved.diff(Config().override(["data.root=other"])) == [
        f"data.root: {str(tmp_path / 'f8k')!r} -> {str(tmp_path / 'other')!r}"]


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
