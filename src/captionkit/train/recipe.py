"""A multi-stage recipe (``train.stages``) run in order by one ``fit``: e.g. cross-entropy,
then encoder fine-tuning, then SCST, each with its own learning rate and epochs.

Each stage is a whole run in ``<train.out_dir>/<name>/`` (its own ``best/``, ``last/``,
``metrics.jsonl`` and resume points) that starts from the previous stage's best checkpoint
(:func:`captionkit.config.stage_configs`). The recipe folder holds the recipe's
``config.yaml`` and ``stages.json``, which records each finished stage (its best checkpoint,
dev metrics and wall time). ``fit(..., resume=True)`` on the recipe folder skips the finished
stages and continues the unfinished one from its resume point.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from captionkit.config import Config
from captionkit.config_stages import stage_configs
from captionkit.errors import CaptionKitError
from captionkit.train.distributed import resolve_device
from captionkit.train.loop import FitResult
from captionkit.train.resume import check_run_folder, has_resume

RECORD = "stages.json"  # the finished stages, in order


def finished_stages(run_dir: str | Path) -> list[dict]:
    """The recipe folder's finished stages (``stages.json``), oldest first; none when absent."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text())["stages"]
    except (ValueError, KeyError, TypeError) as e:
        raise CaptionKitError(f"{path}: unreadable stage record ({e})") from None


def _record(run_dir: Path, stages: list[dict]) -> None:
    """Write ``stages.json`` atomically (rank 0 only under torchrun)."""
    if os.environ.get("RANK", "0") != "0":
        return
    tmp = run_dir / (RECORD + ".tmp")
    tmp.write_text(json.dumps({"stages": stages}, indent=1))
    os.replace(tmp, run_dir / RECORD)


def _clear(run_dir: Path, names: list[str]) -> None:
    """Remove a previous recipe's stage folders and files from ``run_dir``."""
    for name in names:
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for f in (RECORD, "config.yaml"):
        (run_dir / f).unlink(missing_ok=True)


def fit_stages(cfg: Config, progress: bool = True, resume: bool = False,
               overwrite: bool = False) -> FitResult:
    """Run ``cfg.train.stages`` in order (see the module docstring). Every stage's config and
    names are checked before any data is read; returns the last stage's result, its
    ``history`` being every stage's epochs (each entry with its ``stage`` name)."""
    from captionkit.train.fit import check_names, fit

    stages = stage_configs(cfg)
    for _, stage_cfg in stages:
        check_names(stage_cfg)
        resolve_device(stage_cfg.train.device)
    run_dir = Path(cfg.train.out_dir)
    check_run_folder(run_dir, resume, overwrite)
    done = finished_stages(run_dir) if resume else []
    known = [name for name, _ in stages]
    if [d["name"] for d in done] != known[: len(done)]:
        raise CaptionKitError(f"{run_dir}: its finished stages "
                              f"({', '.join(d['name'] for d in done)}) are not the recipe's "
                              f"first stages ({', '.join(known)})")
    if overwrite and not resume and os.environ.get("RANK", "0") == "0":
        _clear(run_dir, known)
    run_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("RANK", "0") == "0":
        cfg.absolute_paths().save(run_dir / "config.yaml")
    t0 = time.perf_counter()
    history = [dict(h, stage=d["name"]) for d in done for h in d.get("history", [])]
    result = None
    for i, (name, stage_cfg) in enumerate(stages):
        if i < len(done):
            print(f"stage {name}: finished earlier, best {done[i]['best_checkpoint']}")
            continue
        sub = Path(stage_cfg.train.out_dir)
        print(f"stage {i + 1}/{len(stages)} {name}: {stage_cfg.train.stage}, "
              f"{stage_cfg.train.epochs} epoch(s), lr {stage_cfg.train.lr:g}")
        result = fit(stage_cfg, progress, resume=resume and has_resume(sub), overwrite=True)
        done.append({"name": name, "stage": stage_cfg.train.stage,
                     "best_checkpoint": str(result.best_checkpoint),
                     "best_metrics": result.best_metrics, "seconds": round(result.seconds, 1),
                     "history": result.history})
        history += [dict(h, stage=name) for h in result.history]
        _record(run_dir, done)
    last = done[-1]
    return FitResult(run_dir, Path(last["best_checkpoint"]), last["best_metrics"], history,
                     time.perf_counter() - t0 if result is not None else 0.0)
