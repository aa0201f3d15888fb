"""The epoch loop: early stopping, checkpoint selection, metrics log, TensorBoard."""

from __future__ import annotations

import json

import pytest
import torch

from captionkit.config import TrainConfig
from captionkit.errors import CaptionKitError
from captionkit.train.fit import fit
from captionkit.train.loop import train_one_epoch
from captionkit.train.schedule import lr_multiplier
from captionkit.train.stages import Stage


def test_tensorboard_logs_losses_metrics_and_samples(tiny_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = fit(tiny_config.override(["train.epochs=2"]), progress=False)
    acc = EventAccumulator(str(result.run_dir / "tensorboard"),
                           size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "dev/BLEU-4", "dev/CIDEr-D"} <= tags
    assert len(acc.Scalars("dev/CIDEr-D")) == 2
    assert "dev/samples/text_summary" in acc.Tags()["tensors"]
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_early_stopping_on_the_selected_metric(tiny_config, monkeypatch):
    import captionkit.train.loop as loop

    scores = iter([0.5, 0.4, 0.3, 0.9, 0.9])

    def fake_evaluate(*args, **kwargs):
        return {"BLEU-4": 0.1, "CIDEr-D": next(scores)}, {}

    monkeypatch.setattr(loop, "evaluate", fake_evaluate)
    result = fit(tiny_config.override(["train.epochs=5", "train.patience=2"]), progress=False)
    assert len(result.history) == 3  # best at epoch 1, then two epochs without improvement
    assert result.best_metrics["CIDEr-D"] == 0.5
    meta = json.loads((result.best_checkpoint / "meta.json").read_text())
    assert meta["epoch"] == 1


def test_unknown_select_metric_is_refused(tiny_config):
    with pytest.raises(CaptionKitError, match="select_metric"):
        fit(tiny_config.override(["train.select_metric=SPIDEr"]), progress=False)


class CountingStage(Stage):
    """A stage whose update does nothing but return known logs and count its calls."""

    name, logs, log_every = "count", ("loss", "extra"), 2

    def __init__(self):
        super().__init__(torch.nn.Linear(1, 1), None)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1.0)
        for g in self.optimizer.param_groups:
            g["base_lr"] = 1.0
        self.seen, self.lrs, self.checks, self.started = [], [], 0, []

    def start(self, step):
        super().start(step)
        self.started.append(step)

    def step(self, batch):
        self.seen.append(batch)
        self.lrs.append(self.optimizer.param_groups[0]["lr"])
        return {"loss": torch.tensor(float(batch)), "extra": torch.tensor(1.0)}

    def check(self):
        self.checks += 1


def test_one_epoch_loop_owns_schedule_steps_averages_and_resume_points():
    """Whatever the stage: the loop sets the scheduled learning rate before each update,
    counts global steps from where it starts, honours max_steps, averages the stage's logs,
    checks the stage every log_every steps and at the end, and calls on_step after each."""
    stage = CountingStage()
    cfg = TrainConfig(lr_schedule="cosine", max_steps=7)
    points = []
    logs, step = train_one_epoch(stage, [1, 2, 3, 4, 5, 6], cfg, 4, 8, progress=False,
                                 on_step=lambda s, n: points.append((s, n)))
    assert stage.started == [4] and stage.seen == [1, 2, 3] and step == 7  # max_steps=7
    assert logs == {"loss": 2.0, "extra": 1.0}
    assert stage.lrs == pytest.approx([lr_multiplier(s, 8, "cosine") for s in (4, 5, 6)])
    assert points == [(5, 1), (6, 2), (7, 3)]
    assert stage.checks == 2  # after step 2 of the epoch, and at its end
    logs, step = train_one_epoch(stage, [], cfg, 7, 8, progress=False)
    assert logs == {"loss": 0.0, "extra": 0.0} and step == 7
