"""Training stages: what one update is. The epoch loop (:mod:`captionkit.train.loop`) is the
same for all of them; a stage only supplies ``step(batch) -> logs``.

- :class:`CrossEntropy`: teacher-forced cross-entropy plus SAT's attention penalty, on the
  model or its DDP wrapper (the reference; every decoder, every device).
- :class:`captionkit.train.scst.SelfCritical`: self-critical CIDEr-D optimisation.
- :class:`captionkit.train.gpu.step.FastCrossEntropy`: the cross-entropy stage on the GPU fast
  path (same loss, grouped, compiled, graphed), for the decoders that declare it.

:func:`make_stage` picks one from the config.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captionkit.config import Config, TrainConfig
from captionkit.data.dataset import Batch
from captionkit.data.vocab import Vocabulary
from captionkit.errors import CaptionKitError
from captionkit.models.decoders import stochastic
from captionkit.models.precision import autocast
from captionkit.train.distributed import Dist, all_sum
from captionkit.train.losses import caption_loss, hard_attention_loss
from captionkit.train.optim import update


class Stage:
    """One kind of optimizer update. ``model`` is what trains (put in training mode at each
    epoch's start); ``optimizer`` is scheduled by the loop; ``step`` returns detached scalar
    tensors (summed and averaged over the epoch by the loop, read from the device only every
    ``log_every`` steps); ``check`` raises what a step could not (a non-finite loss noticed
    on the device)."""

    name = "stage"
    logs: tuple[str, ...] = ("loss",)  # what step() returns
    log_every = 1

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.updates = 0  # the global step of the next update (named in errors)

    def start(self, step: int) -> None:
        """Called before each epoch with the global step it starts at."""
        self.model.train()
        self.updates = step

    def step(self, batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError

    def check(self) -> None:
        """Raise :class:`~captionkit.errors.NonFiniteLossError` for a problem found late."""

    def state(self) -> dict:
        """What the stage carries from one step to the next beyond the model and optimizer
        (JSON values), saved in resume points."""
        return {}

    def load_state(self, state: dict) -> None:
        """Continue from :meth:`state`'s output (a resume point's)."""


class CrossEntropy(Stage):
    """Teacher-forced cross-entropy with the doubly stochastic attention penalty
    (``train.alpha_c``). ``net`` is the model or its DDP wrapper; under data parallelism
    (``dist``) the loss is normalised by the global batch, so DDP's gradient mean is exact,
    and the logged losses are the global means. A stochastic (hard) attention adds its
    REINFORCE terms, with a moving-average baseline of the captions' log-likelihood
    (``train.hard_*``; the baseline is saved in resume points)."""

    name = "xe"
    logs = ("loss", "ce")

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                 device: torch.device, pad_id: int = 0, dist: Dist | None = None) -> None:
        super().__init__(net, optimizer)
        self.cfg, self.device, self.pad_id, self.dist = cfg, device, pad_id, dist or Dist()
        decoder = getattr(getattr(net, "module", net), "decoder", None)
        self.hard = decoder is not None and stochastic(decoder)
        self.sentinel = bool(getattr(getattr(decoder, "attention", None), "SENTINEL", False))
        self.baseline: float | None = None  # hard attention's moving-average reward

    def step(self, batch: Batch) -> dict[str, Tensor]:
        b, d = batch.to(self.device), self.dist
        tokens = b.tokens
        extras = {} if self.hard else None
        with autocast(self.cfg.amp, self.device):
            logits, alphas = self.model(tokens[:, :-1], b.image_index, pixels=b.pixels,
                                        features=b.features,
                                        extras=extras)  # (C, T-1, V), (C, T-1, N)
        counts = None
        if d.active:  # divide by global counts / world: DDP's gradient mean then is exact
            local = torch.tensor([float(tokens[:, 1:].ne(self.pad_id).sum()), tokens.size(0)],
                                 device=self.device)
            counts = tuple(all_sum(local, d) / d.world)
        loss, ce = caption_loss(logits.float(), alphas.float(), tokens[:, 1:], self.pad_id,
                                self.cfg.alpha_c, counts, self.sentinel)
        if self.hard:
            loss = loss + self._reinforce(logits, tokens[:, 1:], extras, counts)
        update(self.model, self.optimizer, loss, self.cfg, self.updates)
        self.updates += 1
        logged = all_sum(torch.stack([loss.detach(), ce.detach()]), d) / d.world
        return {"loss": logged[0], "ce": logged[1]}

    def state(self) -> dict:
        return {"hard_baseline": self.baseline} if self.hard else {}

    def load_state(self, state: dict) -> None:
        self.baseline = state.get("hard_baseline", self.baseline)

    def _reinforce(self, logits: Tensor, targets: Tensor, extras: dict, counts) -> Tensor:
        """Hard attention's REINFORCE term; updates the moving-average baseline."""
        c = self.cfg
        term, reward = hard_attention_loss(
            logits.float(), targets, self.pad_id, extras["choice_logp"], extras["entropy"],
            self.baseline if self.baseline is not None else 0.0, c.hard_reinforce,
            c.hard_entropy, counts[0] if counts is not None else None)
        r = float(reward)
        self.baseline = r if self.baseline is None else (
            c.hard_baseline_decay * self.baseline + (1 - c.hard_baseline_decay) * r)
        return term


def make_stage(cfg: Config, model: nn.Module, net: nn.Module,
               optimizer: torch.optim.Optimizer, train_ds, vocab: Vocabulary,
               device: torch.device, dist: Dist, fast: bool) -> Stage:
    """The stage ``cfg.train.stage`` names: cross-entropy (on the GPU fast path when
    ``fast``), or SCST."""
    t = cfg.train
    if t.stage == "xe" and fast:
        from captionkit.train.gpu.step import FastCrossEntropy

        k = max((len(cs) for cs in train_ds.captions), default=1)
        return FastCrossEntropy(model, optimizer, t, device, vocab.pad_id, k)
    if t.stage == "xe":
        return CrossEntropy(net, optimizer, t, device, vocab.pad_id, dist)
    if dist.active:
        raise CaptionKitError("SCST under torchrun is not supported yet; run it in one process")
    from captionkit.train.scst import SelfCritical, reward_scorer

    return SelfCritical(model, optimizer, t, device, vocab, reward_scorer(train_ds, t.scst_eos),
                        [r.image_id for r in train_ds.records])
