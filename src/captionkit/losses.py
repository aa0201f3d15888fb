"""Training objectives."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def caption_loss(logits: Tensor, alphas: Tensor, targets: Tensor, pad_id: int,
                 alpha_c: float = 1.0) -> tuple[Tensor, Tensor]:
    """Masked cross-entropy plus Show-Attend-Tell's doubly stochastic attention penalty.

    logits (B, T, V) predict targets (B, T); alphas (B, T, N). The penalty
    ``alpha_c * mean_i (1 - sum_t alpha_ti)^2`` pushes every region to be looked at about once
    over a caption. Returns (total loss, cross-entropy) so both can be logged.
    """
    mask = targets.ne(pad_id)  # (B, T)
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id)
    if alpha_c <= 0:
        return ce, ce
    coverage = (alphas * mask.unsqueeze(-1)).sum(dim=1)  # (B, T, N) -> (B, N)
    penalty = ((1.0 - coverage) ** 2).mean()
    return ce + alpha_c * penalty, ce
