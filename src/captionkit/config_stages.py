"""``train.stages``: a multi-stage recipe inside one config, checked when the config is built.

Each entry of ``train.stages`` is a stage's overrides: ``stage`` and ``epochs`` (required),
any other train field by name, ``encoder.*`` / ``data.*`` fields dotted, and an optional
``name`` (its folder). :func:`stage_configs` turns the recipe into one whole :class:`Config` per
stage, chained by their checkpoints; :mod:`captionkit.train.recipe` runs them.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from captionkit.config import Config
from captionkit.config import _hint as hint
from captionkit.errors import ConfigError

STAGE_REQUIRED = ("stage", "epochs")  # what every entry of train.stages must say
STAGE_SECTIONS = ("encoder", "data")  # sections a stage may override besides train
STAGE_KEYS = ("decoder.dropout",)  # and the one decoder field that is a training choice
_STAGE_FIXED = ("stages", "out_dir", "init")  # set by the recipe, not by a stage
_STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_stage_entries(stages: Any, train_fields: list[str]) -> None:
    """The shape of ``train.stages``: a list of mappings, each with the required keys, known
    field names and a unique folder-safe ``name``; values are checked by :func:`stage_configs`."""
    if not isinstance(stages, list):
        raise ConfigError(f"train.stages must be a list of stages, got {stages!r}")
    names = set()
    for i, entry in enumerate(stages):
        where = f"train.stages[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping (stage: xe, epochs: 3, ...), "
                              f"got {entry!r}")
        missing = [k for k in STAGE_REQUIRED if k not in entry]
        if missing:
            raise ConfigError(f"{where} is missing {', '.join(missing)} (every stage needs "
                              f"{', '.join(STAGE_REQUIRED)})")
        for key in entry:
            section, _, name = str(key).rpartition(".")
            if key == "name" or (not section and name in train_fields
                                 and name not in _STAGE_FIXED):
                continue
            if section in STAGE_SECTIONS or key in STAGE_KEYS:
                continue
            fixed = (f" ({key} is set by the recipe)" if key in _STAGE_FIXED
                     else "" if section else hint("train", name))
            raise ConfigError(f"{where}: unknown key {key!r}{fixed}; a stage sets train "
                              f"fields by name, {', '.join(s + '.*' for s in STAGE_SECTIONS)} "
                              f"fields and {', '.join(STAGE_KEYS)} dotted, and name")
        name = stage_name(i, entry)
        if not isinstance(name, str) or not _STAGE_NAME.fullmatch(name) or name in names:
            raise ConfigError(f"{where}: name {name!r} must be unique and folder-safe "
                              "(letters, digits, _ . -)")
        names.add(name)


def stage_name(i: int, entry: dict) -> str:
    """A stage's folder name: its ``name``, else ``<i+1>-<stage>`` (``1-xe``, ``2-scst``)."""
    return entry.get("name", f"{i + 1}-{entry['stage']}")


def stage_configs(cfg: Config) -> list[tuple[str, Config]]:
    """The recipe ``cfg.train.stages`` as (name, whole config) in order: ``cfg`` without
    stages, with the stage's overrides, trained into ``<train.out_dir>/<name>`` and starting
    from the previous stage's best checkpoint (the first from ``train.init``, if set). A bad
    value raises a ConfigError naming the stage."""
    base = cfg.to_dict()
    base["train"]["stages"] = []
    out: list[tuple[str, Config]] = []
    for i, entry in enumerate(cfg.train.stages):
        name, d = stage_name(i, entry), copy.deepcopy(base)
        for key, value in entry.items():
            section, _, field_name = key.rpartition(".")
            if key != "name":
                d[section or "train"][field_name] = value
        d["train"]["out_dir"] = str(Path(cfg.train.out_dir) / name)
        if out:
            d["train"]["init"] = str(Path(out[-1][1].train.out_dir) / "best")
        try:
            stage_cfg = Config.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"train.stages[{i}] ({name}): {e}") from None
        if stage_cfg.train.stage != "xe" and not stage_cfg.train.init:
            raise ConfigError(f"train.stages[{i}] ({name}): the {stage_cfg.train.stage} stage "
                              "starts from a trained model: put an xe stage before it or set "
                              "train.init")
        out.append((name, stage_cfg))
    return out
