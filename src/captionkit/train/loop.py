"""The epoch loop shared by every training stage (:mod:`captionkit.train.stages`): learning-rate
schedule, progress, step counts, averaged logs, resume points, dev validation, checkpoints,
early stopping and TensorBoard logs. A stage supplies only ``step(batch) -> logs``."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from captionkit.checkpoint import save_checkpoint
from captionkit.config import Config, TrainConfig
from captionkit.data.vocab import Vocabulary
from captionkit.errors import NonFiniteLossError
from captionkit.infer.evaluation import evaluate
from captionkit.progress import bar as progress_bar
from captionkit.train.distributed import Dist, barrier, broadcast
from captionkit.train.optim import set_lr
from captionkit.train.resume import Progress, save_resume
from captionkit.train.stages import Stage


def train_one_epoch(stage: Stage, loader: DataLoader, cfg: TrainConfig, step: int,
                    total_steps: int, progress: bool = True,
                    on_step=None) -> tuple[dict[str, float], int]:
    """One pass of ``stage`` over ``loader``: the learning rate set before every update,
    ``train.max_steps`` honoured, the stage's logs summed on their device and read every
    ``stage.log_every`` steps (and at the end). ``on_step(step, batches_done)`` is called after
    every update (resume points). Returns (mean logs, global step after the epoch)."""
    stage.start(step)
    sums = {k: torch.zeros((), dtype=torch.float64) for k in stage.logs}
    n = 0
    bar = progress_bar(loader, stage.name, progress)
    for batch in bar:
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
        set_lr(stage.optimizer, step, total_steps, cfg)
        for k, v in stage.step(batch).items():
            sums[k] = sums[k] + v.double()  # on the step's device: no wait
        step, n = step + 1, n + 1
        if n % stage.log_every == 0:
            stage.check()
            bar.set_postfix(loss=f"{float(sums['loss']) / n:.3f}")
        if on_step is not None:
            on_step(step, n)
    stage.check()
    return {k: float(v) / max(n, 1) for k, v in sums.items()}, step


@dataclass
class FitResult:
    run_dir: Path
    best_checkpoint: Path
    best_metrics: dict[str, float]
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class TrainLoop:
    """Epochs of a stage with dev validation (greedy captions scored by BLEU and CIDEr-D),
    checkpoints, resume points and early stopping. Its only state is ``state`` (a
    :class:`~captionkit.train.resume.Progress`); only the main process writes files."""

    cfg: Config
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    run_dir: Path
    fingerprint: dict
    state: Progress
    dist: Dist
    vocab: Vocabulary
    dev: object  # the dev dataset
    device: torch.device
    total_steps: int
    progress: bool = True
    writer: object = field(default=None, repr=False)  # TensorBoard, opened on first use

    def save_point(self, epoch: int, batch: int, step: int, stage: Stage) -> None:
        if not self.dist.main:
            return
        s = Progress(epoch, batch, step, self.state.best, self.state.best_epoch,
                     self.state.history, stage.state())
        save_resume(self.run_dir, self.model, self.optimizer, s, self.fingerprint)

    def run(self, stage: Stage, loader: DataLoader, t0: float) -> FitResult:
        """Train the epochs left with ``stage``, validating on the main process after each."""
        cfg, st, every = self.cfg, self.state, self.cfg.train.checkpoint_every
        shown = self.progress and self.dist.main
        for epoch in range(st.epoch, cfg.train.epochs + 1):
            skip = st.batch if epoch == st.epoch else 0
            loader.batch_sampler.position(epoch - 1, skip)

            def on_step(step: int, done: int, epoch=epoch, skip=skip) -> None:
                if every and step % every == 0:
                    self.save_point(epoch, skip + done, step, stage)
            try:
                losses, st.step = train_one_epoch(stage, loader, cfg.train, st.step,
                                                  self.total_steps, shown, on_step)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"{e}; training stopped. Last checkpoint before it: "
                                         f"{self.last_saved()}", e.step) from None
            metrics, samples = self.validate() if self.dist.main else (None, [])
            metrics = broadcast(metrics, self.dist)
            self.record(epoch, losses, metrics, round(time.perf_counter() - t0, 1))
            self.log_board(losses, metrics, samples)
            st.epoch, st.batch = epoch + 1, 0
            self.save_point(st.epoch, 0, st.step, stage)
            barrier(self.dist)
            if cfg.train.max_steps is not None and st.step >= cfg.train.max_steps:
                break
            if cfg.train.patience and epoch - st.best_epoch >= cfg.train.patience:
                print(f"early stop: no better dev {cfg.train.select_metric} for "
                      f"{cfg.train.patience} epoch(s)")
                break
        return FitResult(self.run_dir, self.run_dir / "best", st.best or {}, st.history,
                         time.perf_counter() - t0)

    def validate(self) -> tuple[dict[str, float], list[str]]:
        """Dev metrics of greedy captions, and five sample captions beside a reference."""
        t = self.cfg.train
        metrics, hyps = evaluate(self.model, self.dev, self.vocab, self.device, t.batch_size,
                                 t.eval_max_len, self.progress)
        samples = [f"{self.vocab.decode(h.tokens)}  (reference: "
                   f"{self.dev.records[i].captions[0]})" for i, h in list(hyps.items())[:5]]
        return metrics, samples

    def record(self, epoch: int, losses: dict, metrics: dict, seconds: float) -> None:
        """Log the epoch (metrics.jsonl rewritten from the history), save last/best."""
        cfg, st, key = self.cfg, self.state, self.cfg.train.select_metric
        vocab = self.vocab
        row = {"epoch": epoch, "step": st.step, **losses, **metrics, "seconds": seconds}
        st.history.append(row)
        better = st.best is None or metrics[key] > st.best[key]
        if better:
            st.best, st.best_epoch = metrics, epoch
        if not self.dist.main:
            return
        tmp = self.run_dir / "metrics.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in st.history))
        tmp.replace(self.run_dir / "metrics.jsonl")
        print(f"epoch {epoch}: loss {losses['loss']:.3f}  dev BLEU-4 {metrics['BLEU-4']:.3f}  "
              f"CIDEr-D {metrics['CIDEr-D']:.3f}  ({seconds:.0f}s)")
        save_checkpoint(self.run_dir / "last", self.model, cfg, vocab, epoch, metrics)
        if better:
            save_checkpoint(self.run_dir / "best", self.model, cfg, vocab, epoch, metrics)

    def last_saved(self) -> str:
        pointer = self.run_dir / "resume.json"
        if pointer.is_file():
            return str(self.run_dir / json.loads(pointer.read_text())["folder"])
        return "none (it happened before the first checkpoint)"

    def log_board(self, losses: dict, metrics: dict, samples: list[str]) -> None:
        """Loss, learning rate, dev metrics and sample captions to ``<run>/tensorboard``."""
        if not self.dist.main:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        step = self.state.step
        for k, v in losses.items():
            self.writer.add_scalar(f"train/{k}", v, step)
        self.writer.add_scalar("train/lr", float(self.optimizer.param_groups[0]["lr"]), step)
        for k, v in metrics.items():
            self.writer.add_scalar(f"dev/{k}", v, step)
        if samples:
            self.writer.add_text("dev/samples", "\n\n".join(samples), step)
        self.writer.flush()
