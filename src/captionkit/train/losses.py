"""Training objectives."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def caption_loss(logits: Tensor, alphas: Tensor, targets: Tensor, pad_id: int,
                 alpha_c: float = 1.0,
                 counts: tuple[Tensor | float, Tensor | float] | None = None
                 ) -> tuple[Tensor, Tensor]:
    """Masked cross-entropy plus Show-Attend-Tell's doubly stochastic attention penalty.

    logits (B, T, V) predict targets (B, T); alphas (B, T, N). The penalty
    ``alpha_c * mean_i (1 - sum_t alpha_ti)^2`` pushes every region to be looked at about once
    over a caption. Both terms are sums divided by this batch's (target tokens, captions), or by
    ``counts`` when given (data-parallel training divides by the global batch's). Returns
    (total loss, cross-entropy) so both can be logged.
    """
    mask = targets.ne(pad_id)  # (B, T)
    ce_sum = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id,
                             reduction="sum")
    tokens, captions = counts if counts is not None else (mask.sum(), targets.size(0))
    ce = ce_sum / tokens
    if alpha_c <= 0:
        return ce, ce
    penalty = coverage_penalty(alphas, mask, 1) / (captions * alphas.size(-1))
    return ce + alpha_c * penalty, ce


def coverage_penalty(alphas: Tensor, mask: Tensor, time_dim: int,
                     present: Tensor | None = None) -> Tensor:
    """Show-Attend-Tell's doubly stochastic penalty, summed over captions:
    ``sum_captions sum_i (1 - sum_t alpha_ti)^2``. ``alphas`` (..., N) with its time axis at
    ``time_dim`` (``mask`` the same shape without N: real target steps); ``present`` (the
    captions' shape) leaves out absent captions of a grouped batch."""
    coverage = (alphas * mask.unsqueeze(-1)).sum(dim=time_dim)  # (captions..., N)
    sq = (1.0 - coverage) ** 2
    return sq.sum() if present is None else (sq.sum(-1) * present).sum()
