"""Checkpoints: a folder with ``model.safetensors`` (weights) and ``meta.json`` (config,
vocabulary, epoch, metrics). Nothing is ever unpickled."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from captionkit.config import Config
from captionkit.data.vocab import Vocabulary
from captionkit.errors import CaptionKitError, CheckpointError, ConfigError, UnknownNameError
from captionkit.models.captioner import CaptionModel, build_model

WEIGHTS, META = "model.safetensors", "meta.json"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, model: CaptionModel, cfg: Config, vocab: Vocabulary,
                    epoch: int = 0, metrics: dict[str, Any] | None = None) -> Path:
    """Write weights and metadata into folder ``path`` atomically (temp files, then rename).
    The config's data paths are stored absolute (:meth:`Config.absolute_paths`), so that
    ``captionkit evaluate`` finds the data from any folder; checkpoints written with relative
    ones still load."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format_version": FORMAT_VERSION, "config": cfg.absolute_paths().to_dict(),
            "vocab": vocab.to_dict(),
            "epoch": epoch, "metrics": metrics or {}}
    save_file(tensors, str(path / (WEIGHTS + ".tmp")))
    (path / (META + ".tmp")).write_text(json.dumps(meta, indent=2))
    os.replace(path / (WEIGHTS + ".tmp"), path / WEIGHTS)
    os.replace(path / (META + ".tmp"), path / META)
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder meant by ``path``: the folder itself, the folder of its
    ``model.safetensors`` or ``meta.json``, or a run folder's ``best/`` (said so)."""
    path = Path(path)
    if path.is_file() and path.name in (WEIGHTS, META):
        return path.parent
    if path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint; pass the folder holding {WEIGHTS} "
                              f"and {META}")
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint folder not found")
    if not (path / WEIGHTS).is_file() and (path / "best" / WEIGHTS).is_file():
        print(f"{path} is a run folder: using its best checkpoint, {path / 'best'}")
        return path / "best"
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The checkpoint's metadata, validated enough to rebuild the model (``path``: see
    :func:`resolve_checkpoint`)."""
    path = resolve_checkpoint(path)
    meta_path = path / META
    if not meta_path.is_file() or not (path / WEIGHTS).is_file():
        raise CheckpointError(f"{path}: a checkpoint needs {WEIGHTS} and {META}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path}: invalid JSON ({e.msg})") from None
    for key in ("config", "vocab"):
        if key not in meta:
            raise CheckpointError(f"{meta_path}: missing {key!r}")
    return meta


def load_checkpoint(path: str | Path,
                    device: str = "cpu") -> tuple[CaptionModel, Config, Vocabulary, dict]:
    """Rebuild the model from a checkpoint folder alone: (model in eval mode, config, vocab, meta).
    ``path`` may also be its ``model.safetensors`` or a run folder (its ``best/``)."""
    path = resolve_checkpoint(path)
    meta = read_meta(path)
    try:
        cfg = Config.from_dict(meta["config"])
        vocab = Vocabulary.from_dict(meta["vocab"])
    except (ConfigError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: inconsistent config or vocabulary ({e})") from None
    try:
        model = build_model(cfg, len(vocab), pretrained=False)
    except UnknownNameError as e:
        raise CheckpointError(f"{path}: {e} (the checkpoint was made with a captionkit that "
                              "has it)") from None
    try:
        state = load_file(str(Path(path) / WEIGHTS), device=device)
    except (SafetensorError, OSError) as e:  # truncated or corrupted by a crash
        raise CheckpointError(f"{Path(path) / WEIGHTS}: unreadable weights ({e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the config/vocabulary: "
                              f"{str(e).splitlines()[0]}") from None
    except CaptionKitError:
        raise
    return model.to(device).eval(), cfg, vocab, meta
