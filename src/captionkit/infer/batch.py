"""Batch captioning of a folder (or a list) of images into one Parquet or JSON-lines file.

The pipeline is the same on every engine: :func:`list_sources` (the files, absolute paths),
:func:`decode_batch` (file -> preprocessed pixels, an unreadable file -> an error instead),
:class:`BatchCaptioner` (a callable class: the checkpoint loaded once, pixels -> rows through
the :class:`~captionkit.infer.captioner.BaseCaptioner`'s own beam search), and
:mod:`captionkit.infer.batch_io` (the rows written, resumable). ``engine="local"`` runs it in
this process, batch after batch (the reference; it never imports Ray); ``engine="ray"`` runs
it on Ray Data (:mod:`captionkit.infer.batch_ray`): decoding in CPU tasks, captioning in a
pool of actors, on one machine or a cluster.

Every file gives exactly one row, unreadable ones included (their ``error`` says why), so the
output has as many rows as the source has files.

>>> from captionkit.infer.batch import BatchSettings, run_batch
>>> run_batch("photos/", "captions.parquet", BatchSettings(("runs/demo/best",)))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from captionkit.data.images import Preprocess, load_image
from captionkit.errors import CaptionKitError
from captionkit.infer.batch_io import RowJournal, finalize, prepare_output
from captionkit.infer.decoding import DEFAULT_BEAM
from captionkit.models.precision import DEFAULT_PRECISION

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class BatchSettings:
    """What to caption with, and how: the checkpoint(s) (several: their ensemble), the
    decoding (as ``captionkit caption``), images per batch, the device and precision."""

    checkpoints: tuple[str, ...]
    beam: int = DEFAULT_BEAM
    max_len: int | None = None
    length_penalty: float = 0.0
    no_repeat_ngram: int = 0
    batch_size: int = 16
    precision: str = DEFAULT_PRECISION
    device: str = "cpu"


@dataclass(frozen=True)
class BatchReport:
    """What a run did: ``files`` in the source, ``skipped`` (already in the resumed output),
    ``captioned`` and ``failed`` (rows written this run), ``rows`` (in the output now),
    ``duplicates`` (rows an engine repeated, dropped; 0), ``seconds``."""

    files: int
    skipped: int
    captioned: int
    failed: int
    rows: int
    duplicates: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        """Files captioned (or found unreadable) this run, per second."""
        return (self.captioned + self.failed) / max(self.seconds, 1e-9)


def list_sources(src: str | Path) -> list[str]:
    """The files a source names, as absolute paths (each once, in order): a folder's images
    (searched recursively for :data:`IMAGE_SUFFIXES`, sorted), one image, or a text file
    listing paths one a line (blank lines and ``#`` comments skipped; a relative path is
    relative to the list's folder; listed files are taken as they are, images or not)."""
    p = Path(src)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*")
                       if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
        files = [str(p)]
    elif p.is_file():
        files = _listed(p)
    else:
        raise CaptionKitError(f"{src}: no such folder or file")
    files = list(dict.fromkeys(os.path.abspath(f) for f in files))
    if not files:
        raise CaptionKitError(f"{src}: no images to caption (a folder is searched recursively "
                              f"for {', '.join(sorted(IMAGE_SUFFIXES))}; a text file lists "
                              "image paths, one a line)")
    return files


def _listed(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise CaptionKitError(f"{path}: neither an image nor a text file listing image "
                              "paths") from None
    names = (line.strip() for line in lines)
    return [str(path.parent / n) for n in names if n and not n.startswith("#")]


def decode_batch(batch: dict, preprocess: Preprocess) -> dict[str, np.ndarray]:
    """``{"path": files}`` -> ``{"path", "pixels" (B, 3, S, S) float32, "error"}``: each file
    decoded as ``captionkit caption`` does (:func:`~captionkit.data.images.load_image`, then
    the encoder's preprocessing); a file that cannot be read gets zero pixels and its error
    (``""`` for none)."""
    paths = [str(p) for p in batch["path"]]
    pixels = np.zeros((len(paths), 3, preprocess.size, preprocess.size), np.float32)
    errors = []
    for i, path in enumerate(paths):
        try:
            pixels[i] = preprocess(load_image(path)).numpy()  # (3, S, S)
            errors.append("")
        except Exception as e:  # noqa: BLE001  (any failure of one file becomes its row)
            errors.append(str(e) if isinstance(e, CaptionKitError)
                          else f"{path}: cannot read image ({type(e).__name__}: {e})")
    return {"path": np.array(paths, dtype=object), "pixels": pixels,
            "error": np.array(errors, dtype=object)}


def load_captioner(settings: BatchSettings):
    """The captioner the settings name, loaded as ``captionkit caption`` loads it."""
    from captionkit.infer.ensemble import load_ensemble

    return load_ensemble(list(settings.checkpoints), settings.device, settings.precision)


class BatchCaptioner:
    """The captioning step, a callable class (Ray Data builds one per actor, so the model
    loads once per actor): a decoded batch (:func:`decode_batch`) -> row columns
    (:data:`~captionkit.infer.batch_io.ROW_FIELDS`), by the captioner's ``caption_pixels``."""

    def __init__(self, settings: BatchSettings, captioner=None, threads: int | None = None):
        """``captioner``: one already loaded (else the settings' checkpoint is loaded);
        ``threads``: torch CPU threads to use (None: leave as they are)."""
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))
        self.settings = settings
        self.captioner = load_captioner(settings) if captioner is None else captioner

    def __call__(self, batch: dict) -> dict[str, list]:
        s = self.settings
        paths, errors = [str(p) for p in batch["path"]], [str(e) for e in batch["error"]]
        ok = [i for i, e in enumerate(errors) if not e]
        results = {}
        if ok:
            x = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))  # (b, 3, S, S)
            found = self.captioner.caption_pixels(x, s.beam, s.max_len, s.length_penalty,
                                                  s.no_repeat_ngram)
            results = dict(zip(ok, found, strict=True))
        cols: dict[str, list] = {"path": paths, "caption": [], "score": [],
                                 "alternatives": [], "error": []}
        for i, err in enumerate(errors):
            res = results.get(i)
            cols["caption"].append(res.text if res else None)
            cols["score"].append(float(res.score) if res else None)
            cols["alternatives"].append([{"text": t, "score": float(v)}
                                         for t, v in res.alternatives] if res else None)
            cols["error"].append(None if res else err)
        return cols


def local_batches(paths: list[str], settings: BatchSettings,
                  captioner=None) -> Iterator[dict[str, list]]:
    """The local engine: decode and caption ``settings.batch_size`` files at a time in this
    process; yields each batch's row columns."""
    step = BatchCaptioner(settings, captioner)
    preprocess = step.captioner.preprocess
    for s in range(0, len(paths), settings.batch_size):
        yield step(decode_batch({"path": paths[s : s + settings.batch_size]}, preprocess))


def run_batch(src: str | Path, out: str | Path, settings: BatchSettings, engine: str = "local",
              ray_options=None, resume: bool = False, overwrite: bool = False,
              progress: bool = False) -> BatchReport:
    """Caption every file of ``src`` (see :func:`list_sources`) into ``out`` (``.parquet`` or
    ``.jsonl``), one row a file, on ``engine`` (``local`` or ``ray``; ``ray_options``: a
    :class:`captionkit.infer.batch_ray.RayOptions`). An existing ``out`` is refused unless
    ``resume`` (caption only the files not yet captioned in it, then write the union) or
    ``overwrite``."""
    if engine not in ENGINES:
        raise CaptionKitError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    t0 = time.perf_counter()
    files = list_sources(src)
    done = prepare_output(out, resume, overwrite)
    todo = [f for f in files if f not in done]
    batches = iter(())
    if todo and engine == "local":
        batches = local_batches(todo, settings)
    elif todo:
        from captionkit.infer.batch_ray import RayOptions, ray_batches

        batches = ray_batches(todo, settings, ray_options or RayOptions())
    with RowJournal(out) as journal:
        _drain(batches, journal, len(todo), progress)
    missing = len(set(todo) - journal.written)
    if missing:  # an engine lost rows: keep the journal, so --resume finishes the job
        raise CaptionKitError(f"{missing} of {len(todo)} files got no row; the others are "
                              f"kept in {journal.path}: run again with --resume")
    rows = finalize(out, resume)
    written = len(journal.written)
    return BatchReport(len(files), len(files) - len(todo), written - journal.failed,
                       journal.failed, rows, journal.duplicates, time.perf_counter() - t0)


def _drain(batches: Iterator[dict[str, list]], journal: RowJournal, total: int,
           progress: bool) -> None:
    from captionkit.progress import bar

    with bar(total=total, desc="caption", enabled=progress, unit="img") as pbar:
        for columns in batches:
            pbar.update(journal.write(columns))
