"""The optimizer and one update step, shared by every training stage."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captionkit.config import TrainConfig
from captionkit.errors import NonFiniteLossError
from captionkit.train.schedule import lr_multiplier


def build_optimizer(model: nn.Module, cfg: TrainConfig,
                    fused: bool = False) -> torch.optim.Optimizer:
    """Adam over the decoder, plus the encoder at its own learning rate when it is trainable.
    ``fused`` gives the fused, CUDA-graph-capturable Adam with learning rates held in device
    tensors (what :class:`captionkit.train.gpu.step.FastTrainStep` needs); the arithmetic is Adam's."""
    groups = [{"params": list(model.decoder.parameters()), "lr": cfg.lr}]
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    if enc:
        groups.append({"params": enc, "lr": cfg.encoder_lr})
    for g in groups:
        g["base_lr"] = g["lr"]
    if not fused:
        return torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
    device = groups[0]["params"][0].device
    for g in groups:
        g["lr"] = torch.tensor(float(g["lr"]), device=device)
    return torch.optim.Adam(groups, weight_decay=cfg.weight_decay, fused=True,
                            capturable=device.type == "cuda")


def set_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int,
           cfg: TrainConfig) -> None:
    """Every group's learning rate at ``step``: its base rate times the schedule's factor."""
    factor = lr_multiplier(step, total_steps, cfg.lr_schedule, cfg.warmup_steps)
    for g in optimizer.param_groups:
        if isinstance(g["lr"], Tensor):  # fused Adam: updated in place, no host sync
            g["lr"].fill_(g["base_lr"] * factor)
        else:
            g["lr"] = g["base_lr"] * factor


def update(model: nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor, cfg: TrainConfig,
           step: int) -> None:
    """One optimizer step on ``loss`` (refused when it is NaN/inf), with gradient clipping."""
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"loss became {loss.item()} at step {step}", step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
