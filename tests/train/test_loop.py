"""The epoch loop: early stopping, checkpoint selection, metrics log, TensorBoard."""

from __future__ import annotations

import json

import pytest

from captionkit.errors import CaptionKitError
from captionkit.train.fit import fit


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
    import captionkit.train.fit as engine

    scores = iter([0.5, 0.4, 0.3, 0.9, 0.9])

    def fake_evaluate(*args, **kwargs):
        return {"BLEU-4": 0.1, "CIDEr-D": next(scores)}, {}

    monkeypatch.setattr(engine, "evaluate", fake_evaluate)
    result = fit(tiny_config.override(["train.epochs=5", "train.patience=2"]), progress=False)
    assert len(result.history) == 3  # best at epoch 1, then two epochs without improvement
    assert result.best_metrics["CIDEr-D"] == 0.5
    meta = json.loads((result.best_checkpoint / "meta.json").read_text())
    assert meta["epoch"] == 1


def test_unknown_select_metric_is_refused(tiny_config):
    with pytest.raises(CaptionKitError, match="select_metric"):
        fit(tiny_config.override(["train.select_metric=SPIDEr"]), progress=False)
