"""Frozen, typed run configuration: data, encoder, decoder and train sections in one ``Config``.

The defaults are the ``shapes_demo`` preset (what ``captionkit demo`` trains); the other presets
in ``configs/`` override what differs.

Presets live in ``configs/*.yaml`` (shipped in the package as ``captionkit/configs``, a link to
that folder) and are found by name from any working directory; ``--set section.key=value``
overrides any field (an unknown one gets a "did you mean"); the resolved config, with its data
paths made absolute, is written into every run folder and checkpoint so a run can always be
rebuilt, from anywhere.

Every section validates itself when it is built (``__post_init__``), whichever way it is built:
``load_config``, ``Config.from_dict``, ``Config.override``, ``dataclasses.replace`` or a direct
``TrainConfig(...)``. A bad value raises a ``ConfigError`` naming the field (``train.stage``)
and, for choice fields, the allowed values (the module-level tuples below).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from captionkit.errors import ConfigError

# The allowed values of every choice field (the training code imports them from here).
STAGES = ("xe", "scst")
FAST_PATHS = ("auto", "always", "never")
LR_SCHEDULES = ("constant", "cosine", "step")
SCST_BASELINES = ("greedy", "mean")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
SELECT_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D")  # the validation metrics
HARD_DECODES = ("argmax", "expected")  # hard attention at test time
DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N, a CUDA device by index
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# The sizes each built-in encoder takes (encoder.image_size): name -> (native size, stride). A
# stride means any multiple of it in IMAGE_SIZES (grid = size / stride per side); None: the
# native size only (shapes_cnn's learned positions fix its grid; Inception v3's unpadded
# convolutions have no exact stride). models/encoders.py registers the same numbers in each
# EncoderInfo (tests/models/test_encoders.py holds them equal); other encoders are checked there.
ENCODER_SIZES = {"shapes_cnn": (96, None), "inceptionv3": (299, None), "resnet50": (224, 32),
                 "resnet101": (224, 32), "densenet121": (224, 32),
                 "efficientnet_lite0": (224, 32), "efficientnet_lite1": (240, 32),
                 "efficientnet_lite2": (260, 32)}
IMAGE_SIZES = (64, 1024)  # the smallest and largest encoder.image_size (2x2 to 32x32 at 32)

# The presets: the repository's configs/ folder, which the package links to and the wheel carries.
PRESET_DIR = Path(__file__).resolve().parent / "configs"
DATA_PATHS = ("root", "feature_cache")  # the data fields that name files or folders
# Names other tools use for a field -> captionkit's name (for "did you mean" hints).
_ALIASES = {"learning_rate": "lr", "num_epochs": "epochs", "n_epochs": "epochs",
            "max_epochs": "epochs", "bs": "batch_size", "lr_scheduler": "lr_schedule",
            "scheduler": "lr_schedule", "clip_grad": "grad_clip", "max_grad_norm": "grad_clip",
            "workers": "num_workers", "data_dir": "root", "path": "root", "output_dir": "out_dir",
            "hidden_size": "hidden_dim", "embed_size": "embed_dim", "embedding_dim": "embed_dim",
            "attention_size": "attention_dim", "gpu": "device"}


@dataclass(frozen=True)
class DataConfig:
    """Where the captions and images come from, and how the vocabulary is built."""

    dataset: str = "shapes"  # a name in captionkit.data.DATASETS
    root: str = "runs/data/shapes"  # dataset folder (for shapes: where it is generated)
    num_train: int = 4000  # shapes only: images per split
    num_dev: int = 300
    num_test: int = 300
    seed: int = 0  # shapes generation and seeded CSV splits
    min_freq: int = 1  # vocabulary: drop rarer words
    max_len: int = 20  # vocabulary: truncate captions to this many words
    num_workers: int = 0  # image-decoding worker processes
    feature_cache: str | None = None  # frozen encoder: train from this feature cache folder

    def __post_init__(self) -> None:
        _at_least("data", self, min_freq=1, max_len=1, num_workers=0)


@dataclass(frozen=True)
class EncoderConfig:
    """Which image encoder, with which weights, and how much of it trains."""

    name: str = "shapes_cnn"  # a name in captionkit.models.ENCODERS
    pretrained: bool = False  # load ImageNet weights (offline where the encoder allows)
    weights: str | None = None  # a local weights file (safetensors or state dict) instead
    trainable: bool = True  # False freezes the encoder...
    finetune_blocks: int = 0  # ...except its last N stages (trained at train.encoder_lr)
    image_size: int | None = None  # square input side in px; None: the encoder's native size

    def __post_init__(self) -> None:
        _at_least("encoder", self, finetune_blocks=0)
        if self.image_size is not None:  # an encoder not listed is checked when it is built
            native, stride = ENCODER_SIZES.get(self.name, (self.image_size, None))
            check_image_size(self.name, self.image_size, native, stride)


def check_image_size(name: str, size: Any, native: int, stride: int | None) -> None:
    """``size`` must be an image size encoder ``name`` takes: its ``native`` size, or (with a
    ``stride``) a multiple of the stride within :data:`IMAGE_SIZES`; else a ConfigError that
    names the valid choices."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise ConfigError(f"encoder.image_size must be an int (pixels) or null, got {size!r}")
    if size == native:
        return
    if stride is None:
        raise ConfigError(f"encoder.image_size {size} does not fit {name}: it takes only its "
                          f"native {native} px (leave encoder.image_size unset)")
    low, high = (-(-IMAGE_SIZES[0] // stride) * stride, IMAGE_SIZES[1] // stride * stride)
    if size % stride or not low <= size <= high:
        near = sorted({max(low, min(high, (size + k * stride) // stride * stride))
                       for k in (0, 1)})
        raise ConfigError(f"encoder.image_size {size} does not fit {name}: choose its native "
                          f"{native}, or a multiple of its stride {stride} from {low} to {high} "
                          f"(e.g. {' or '.join(map(str, near))}); grid = size / {stride}")


@dataclass(frozen=True)
class DecoderConfig:
    """Which caption decoder, and its sizes."""

    name: str = "lstm"  # a name in captionkit.models.DECODERS
    attention: str = "additive"  # lstm/gru: a name in captionkit.models.attention.ATTENTIONS
    embed_dim: int = 64
    hidden_dim: int = 256
    attention_dim: int = 128
    dropout: float = 0.5
    num_layers: int = 2  # transformer decoder blocks (the RNN decoders have one layer)
    num_heads: int = 4  # transformer attention heads
    hard_decode: str = "argmax"  # hard attention at test time: argmax region | expected context

    def __post_init__(self) -> None:
        _at_least("decoder", self, embed_dim=1, hidden_dim=1, attention_dim=1, num_layers=1,
                  num_heads=1)
        if not 0 <= _number("decoder.dropout", self.dropout) < 1:
            raise ConfigError(f"decoder.dropout must be in [0, 1), got {self.dropout!r}")
        _one_of("decoder", self, hard_decode=HARD_DECODES)


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimiser, schedule, stage (xe or scst), device and fast step."""

    epochs: int = 8
    batch_size: int = 32  # images per batch; each contributes all of its captions
    lr: float = 1e-3
    encoder_lr: float = 1e-3  # used when the encoder is trainable
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    alpha_c: float = 0.1  # doubly stochastic attention penalty weight
    lr_schedule: str = "cosine"  # constant | cosine | step
    warmup_steps: int = 0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    out_dir: str = "runs/train"
    max_steps: int | None = None  # stop early (smoke tests)
    amp: bool = False  # bf16 autocast (CUDA, or CPUs with native bf16 such as AVX512-BF16)
    eval_max_len: int = 20  # longest generated caption during validation
    select_metric: str = "CIDEr-D"  # dev metric that picks the best checkpoint (or BLEU-4)
    patience: int = 0  # stop after this many epochs without a better dev metric (0 = never)
    stage: str = "xe"  # xe: cross-entropy | scst: self-critical CIDEr-D optimisation
    init: str | None = None  # checkpoint to start from (required by the scst stage)
    scst_samples: int = 5  # sampled captions per image
    scst_baseline: str = "greedy"  # greedy | mean (of the image's other samples)
    scst_eos: bool = False  # rewards score caption endings (an end word on refs and samples)
    scst_xe_weight: float = 0.0  # + this x cross-entropy of the references (mixed objective)
    checkpoint_every: int = 0  # also write a resume point every N steps (0 = each epoch end)
    bucket_pool: int = 0  # length-bucketed batches sorted within pools of N batches (0 = off)
    fast_path: str = "auto"  # grouped fast step: always | never | auto (CUDA: compiled+graphs)
    fast_hoist_images: int = 0  # fast step: context product out of the recurrence at <= N images
    fast_compile_mode: str = "default"  # fast step on CUDA: default | max-autotune-no-cudagraphs
    hard_reinforce: float = 1.0  # hard attention: weight of the REINFORCE term (lambda_r)
    hard_entropy: float = 0.01  # hard attention: weight of the entropy bonus (lambda_e)
    hard_baseline_decay: float = 0.9  # hard attention: moving-average reward baseline
    # A multi-stage recipe run in order by one `captionkit train` (see stage_configs): each
    # entry needs `stage` and `epochs`, may set any other train field (plain keys) and
    # `encoder.*` / `data.*` fields (dotted keys), and an optional `name` (its folder).
    stages: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        _one_of("train", self, stage=STAGES, fast_path=FAST_PATHS, lr_schedule=LR_SCHEDULES,
                scst_baseline=SCST_BASELINES, fast_compile_mode=COMPILE_MODES,
                select_metric=SELECT_METRICS)
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"unknown train.device {self.device!r}; choose one of: "
                              "auto, cpu, cuda, cuda:N, mps")
        _at_least("train", self, epochs=1, batch_size=1, encoder_lr=0, weight_decay=0,
                  grad_clip=0, alpha_c=0, warmup_steps=0, eval_max_len=1, patience=0,
                  scst_samples=1, scst_xe_weight=0, checkpoint_every=0, bucket_pool=0,
                  fast_hoist_images=0, hard_reinforce=0, hard_entropy=0, hard_baseline_decay=0)
        if not _number("train.hard_baseline_decay", self.hard_baseline_decay) < 1:
            raise ConfigError("train.hard_baseline_decay must be in [0, 1), got "
                              f"{self.hard_baseline_decay!r}")
        _at_least("train", self, lr=0)  # 0 trains nothing, as older runs may have done
        if self.max_steps is not None:  # 0: stop before the first step (smoke tests)
            _at_least("train", self, max_steps=0)
        from captionkit.config_stages import check_stage_entries

        check_stage_entries(self.stages, [f.name for f in fields(TrainConfig)])


@dataclass(frozen=True)
class Config:
    """One run's whole configuration; every section checks its fields when it is built."""

    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for name, cls in (("data", DataConfig), ("encoder", EncoderConfig),
                          ("decoder", DecoderConfig), ("train", TrainConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, "
                                  f"got {type(getattr(self, name)).__name__}")
        if self.train.stages:
            from captionkit.config_stages import stage_configs

            stage_configs(self)  # every stage's whole config validates now, before any work

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Config:
        return _build(cls, d or {}, "")

    def override(self, assignments: list[str]) -> Config:
        """Apply ``section.key=value`` strings; values are parsed as YAML scalars."""
        d = self.to_dict()
        for item in assignments:
            key, sep, raw = item.partition("=")
            parts = key.strip().split(".")
            if not sep or len(parts) != 2:
                raise ConfigError(f"override {item!r} must look like section.key=value")
            section, name = parts
            if section not in d:
                raise ConfigError(f"override {item!r}: no section {section!r}"
                                  f"{_hint(section, name)}; the sections are: {', '.join(d)}")
            if name not in d[section]:
                raise ConfigError(f"override {item!r}: no field {key.strip()!r}"
                                  f"{_hint(section, name)}; {section}'s fields are: "
                                  f"{', '.join(d[section])}")
            d[section][name] = yaml.safe_load(raw) if raw.strip() else None
        return Config.from_dict(d)

    def absolute_paths(self) -> Config:
        """This config with the data section's relative paths (``data.root``,
        ``data.feature_cache``) made absolute from the working directory, as run folders and
        checkpoints store them, so that they still name the same data from another folder."""
        paths = {k: _absolute(getattr(self.data, k)) for k in DATA_PATHS}
        return dataclasses.replace(self, data=dataclasses.replace(self.data, **paths))

    def diff(self, other: Config) -> list[str]:
        """Every field that differs, as ``section.key: self -> other``; data paths are compared
        as the files they name from the working directory (``f8k`` is ``$PWD/f8k``)."""
        a, b = self.absolute_paths().to_dict(), other.absolute_paths().to_dict()
        return [f"{sec}.{k}: {a[sec][k]!r} -> {b[sec][k]!r}"
                for sec in a for k in a[sec] if a[sec][k] != b[sec][k]]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def list_presets() -> list[str]:
    """Names of the presets shipped with captionkit (``configs/*.yaml``), sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def find_config(path: str | Path) -> Path:
    """The YAML file ``path`` names: an existing file first, else a shipped preset by name,
    from any working directory (``NAME``, ``NAME.yaml`` or ``configs/NAME.yaml``). Anything
    else raises a ConfigError listing the presets."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    name = p.name.removesuffix(".yaml")
    by_name = p.parent in (Path("."), Path("configs"))  # NAME, NAME.yaml, configs/NAME.yaml
    if by_name and (PRESET_DIR / f"{name}.yaml").is_file():
        return PRESET_DIR / f"{name}.yaml"
    presets = list_presets()
    close = difflib.get_close_matches(name, presets, n=1)
    named = f" and no preset is called {name!r}" if by_name else ""
    raise ConfigError(f"{path}: config file not found (looked for {p.absolute()}){named}; "
                      f"{_maybe(close)}the presets are: {', '.join(presets)} (pass one by "
                      f"name, e.g. --config {(close or presets)[0]}, or the path of a YAML file)")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML file or a preset by name (see :func:`find_config`; the defaults when
    ``path`` is None) and apply overrides."""
    cfg = Config()
    if path is not None:
        p = find_config(path)
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a mapping of sections")
        try:
            cfg = Config.from_dict(raw)
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None
    return cfg.override(overrides or [])


def _build(cls: type, d: dict[str, Any], prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(d).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        section = prefix.rstrip(".")
        named = ", ".join(prefix + k + (_hint(section, k) if section else _hint(k))
                          for k in unknown)
        what, listed = ("field(s)", f"{section}'s fields are") if section else (
            "section(s)", "the sections are")
        raise ConfigError(f"unknown {what} {named}; {listed}: {', '.join(known)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in d.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


def _absolute(path: str | None) -> str | None:
    """``path`` made absolute from the working directory (``~`` expanded); unset stays unset."""
    return os.path.abspath(os.path.expanduser(path)) if isinstance(path, str) and path else path


def _maybe(names: list[str]) -> str:
    """``"did you mean a or b? "``, or nothing when there is no guess."""
    return f"did you mean {' or '.join(names)}? " if names else ""


def _hint(section: str, name: str | None = None) -> str:
    """`` (did you mean train.lr?)`` for an unknown ``section.name`` (or section alone): the
    field another tool's name stands for, the same field in another section, or a close
    spelling; nothing when there is no good guess."""
    fields_of = {s: [f.name for f in fields(c)] for s, c in typing.get_type_hints(Config).items()}
    keys = [f"{s}.{f}" for s, fs in fields_of.items() for f in fs]
    guess: list[str] = []
    if name is not None:
        name = _ALIASES.get(name, name)
        guess = [k for k in keys if k.endswith(f".{name}")]  # the field, in whichever section
        if not guess:  # a close spelling, in the section (anywhere when the section is unknown)
            pool = [k for k in keys if k.startswith(f"{section}.")] or keys
            close = difflib.get_close_matches(name, [k.split(".")[1] for k in pool], n=1)
            guess = [k for k in pool if close and k.endswith(f".{close[0]}")]
    if not guess and section not in fields_of:
        guess = difflib.get_close_matches(section, fields_of, n=1)
    return f" ({_maybe(guess).strip()})" if guess else ""


def _one_of(section: str, obj: Any, **allowed: tuple[str, ...]) -> None:
    """Each named field of ``obj`` must be one of its allowed values."""
    for name, choices in allowed.items():
        value = getattr(obj, name)
        if not isinstance(value, str) or value not in choices:
            raise ConfigError(f"unknown {section}.{name} {value!r}; choose one of: "
                              f"{', '.join(choices)}")


def _at_least(section: str, obj: Any, **lowest: float) -> None:
    """Each named numeric field of ``obj`` must be >= its lowest value."""
    for name, low in lowest.items():
        value = _number(f"{section}.{name}", getattr(obj, name))
        if not value >= low:  # NaN fails too
            raise ConfigError(f"{section}.{name} must be >= {low}, got {value!r}")


def _number(name: str, value: Any) -> float:
    """``value`` itself when it is an int or float (not a bool), else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    return value


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Check a YAML value against a field's type (int -> float is allowed)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)  # ints, and "1e-3" (which YAML 1.1 reads as a string)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if hint in (int, float, str) and (not isinstance(value, hint) or isinstance(value, bool)):
        raise ConfigError(f"{name} must be {hint.__name__}, got {value!r}")
    return value
