"""Exact resume: everything needed to continue a run bit for bit, written atomically.

A resume point is a folder ``<run>/resume-<step>/`` holding ``model.safetensors``,
``optimizer.safetensors`` (Adam's moments and step counts, plus the RNG states) and
``state.json`` (epoch, batches done in it, global step, best metrics, history, optimizer
param groups, Python RNG state, a fingerprint of the data). The folder is complete before
``<run>/resume.json`` is atomically switched to point at it, so a run killed at any instant
leaves the previous resume point intact; older folders are then removed. The data order needs no
saving: each epoch's batches are a pure function of (seed, epoch), and the sampler is
positioned at the saved batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from captionkit.errors import CaptionKitError

POINTER = "resume.json"


@dataclass
class Progress:
    """Where a run stands: ``epoch`` (1-based) is the epoch being trained, ``batch`` how many
    of its batches are done, ``step`` the global optimizer step; ``stage`` what the stage
    carries between steps (:meth:`captionkit.train.stages.Stage.state`)."""

    epoch: int = 1
    batch: int = 0
    step: int = 0
    best: dict | None = None
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    stage: dict = field(default_factory=dict)


def data_fingerprint(train: list, dev: list, vocab) -> dict:
    """What the run trains on: sizes plus a hash of every image id, caption and vocab word."""
    h = hashlib.sha256()
    for split in (train, dev):
        for r in split:
            h.update(json.dumps([r.image_id, list(r.captions)]).encode())
        h.update(b"|")
    h.update(json.dumps(vocab.itos).encode())
    return {"train_images": len(train), "dev_images": len(dev), "vocab_size": len(vocab),
            "sha256": h.hexdigest()}


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _plain(groups: list[dict]) -> list[dict]:
    """Param groups as JSON values (a fused optimizer holds its learning rate in a tensor)."""
    return [{k: float(v) if torch.is_tensor(v) else v for k, v in g.items()} for g in groups]


def save_resume(run_dir: str | Path, model, optimizer, progress: Progress,
                fingerprint: dict) -> Path:
    """Write a resume point for ``progress`` and switch ``resume.json`` to it atomically."""
    run_dir = Path(run_dir)
    folder = run_dir / f"resume-{progress.step:09d}"
    tmp = run_dir / (folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(tmp / "model.safetensors"))
    sd = optimizer.state_dict()
    tensors = {f"state.{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).contiguous().cpu()
               for i, st in sd["state"].items() for k, v in st.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    state = {"progress": asdict(progress), "param_groups": _plain(sd["param_groups"]),
             "python_rng": random.getstate(), "fingerprint": fingerprint}
    (tmp / "state.json").write_text(json.dumps(state))
    for f in tmp.iterdir():
        _fsync_file(f)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    pointer_tmp = run_dir / (POINTER + ".tmp")
    pointer_tmp.write_text(json.dumps({"folder": folder.name, "step": progress.step}))
    _fsync_file(pointer_tmp)
    os.replace(pointer_tmp, run_dir / POINTER)
    for old in run_dir.glob("resume-*"):
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def has_resume(run_dir: str | Path) -> bool:
    return (Path(run_dir) / POINTER).is_file()


# What a run writes into its folder (removed by ``fit(..., overwrite=True)``)
RUN_FILES = ("best", "last", "resume-*", POINTER, "metrics.jsonl", "config.yaml", "vocab.json",
             "skipped_images.txt", "tensorboard")


def check_run_folder(run_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse to train into a folder that already holds something, unless the run is resumed
    or ``overwrite`` says to replace it."""
    run_dir = Path(run_dir)
    if resume or overwrite or not run_dir.is_dir():
        return
    held = sorted(p.name for p in run_dir.iterdir())
    if held:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise CaptionKitError(f"{run_dir}: the run folder is not empty ({shown}); continue "
                              f"that run with --resume {run_dir}, replace it with --overwrite, "
                              "or choose another --out")


def clear_run_folder(run_dir: str | Path) -> None:
    """Remove a previous run's files (:data:`RUN_FILES`) from ``run_dir``; others stay."""
    run_dir = Path(run_dir)
    for pattern in RUN_FILES:
        for path in run_dir.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def load_resume(run_dir: str | Path, model, optimizer, fingerprint: dict) -> Progress:
    """Restore model, optimizer and RNG states from the run's resume point; refuse if the
    data differs from what the run was started on."""
    run_dir = Path(run_dir)
    try:
        folder = run_dir / json.loads((run_dir / POINTER).read_text())["folder"]
        state = json.loads((folder / "state.json").read_text())
        weights = load_file(str(folder / "model.safetensors"))
        tensors = load_file(str(folder / "optimizer.safetensors"))
    except (OSError, KeyError, ValueError, SafetensorError) as e:
        raise CaptionKitError(f"{run_dir}: unreadable resume point ({e})") from None
    saved = state["fingerprint"]
    diff = [f"{k}: run started with {saved.get(k)!r}, now {v!r}"
            for k, v in fingerprint.items() if saved.get(k) != v]
    if diff:
        raise CaptionKitError(f"{run_dir}: the data changed since the run started; "
                              + "; ".join(diff))
    model.load_state_dict(weights, strict=True)
    opt_state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("state."):
            _, i, name = key.split(".", 2)
            opt_state.setdefault(int(i), {})[name] = v
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    v, internal, gauss = state["python_rng"]
    random.setstate((v, tuple(internal), gauss))
    return Progress(**state["progress"])
