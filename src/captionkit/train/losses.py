"""Training objectives."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def caption_loss(logits: Tensor, alphas: Tensor, targets: Tensor, pad_id: int,
                 alpha_c: float = 1.0,
                 counts: tuple[Tensor | float, Tensor | float] | None = None,
                 sentinel: bool = False) -> tuple[Tensor, Tensor]:
    """Masked cross-entropy plus Show-Attend-Tell's doubly stochastic attention penalty.

    logits (B, T, V) predict targets (B, T); alphas (B, T, N). The penalty
    ``alpha_c * mean_i (1 - sum_t alpha_ti)^2`` pushes every region to be looked at about once
    over a caption. Both terms are sums divided by this batch's (target tokens, captions), or by
    ``counts`` when given (data-parallel training divides by the global batch's). Returns
    (total loss, cross-entropy) so both can be logged.

    ``sentinel``: the maps of a sentinel mechanism (adaptive) sum to 1 - beta; the penalty is
    then taken over where the word looked *among the regions* (alpha / sum alpha), so it
    spreads attention without pushing beta to zero (on the raw maps it does: the sentinel of
    a Flickr8k model trained with ``alpha_c=1`` was never used).
    """
    mask = targets.ne(pad_id)  # (B, T)
    ce_sum = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id,
                             reduction="sum")
    tokens, captions = counts if counts is not None else (mask.sum(), targets.size(0))
    ce = ce_sum / tokens
    if alpha_c <= 0:
        return ce, ce
    if sentinel:
        alphas = alphas / alphas.sum(-1, keepdim=True).clamp_min(1e-6)  # (B, T, N) over regions
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


def hard_attention_loss(logits: Tensor, targets: Tensor, pad_id: int, choice_logp: Tensor,
                        entropy: Tensor, baseline: float, reinforce: float, entropy_weight: float,
                        tokens: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
    """Show-Attend-Tell's REINFORCE terms for stochastic hard attention, to add to the
    cross-entropy (whose gradient is the estimator's first term).

    Each caption's reward is its log-likelihood under the sampled locations,
    ``r = log p(y | s, a)`` from logits (C, T, V) and targets (C, T); the choices' log-probs
    ``choice_logp`` (C, T) (0 where a step used the expected context) are pushed up by
    ``reinforce * (r - baseline)`` and the per-step ``entropy`` (C, T) of alpha is rewarded by
    ``entropy_weight``. Both are divided by the target tokens (``tokens``, as the cross-entropy
    is). Returns (the loss term, the batch's mean reward for the moving-average baseline).
    """
    mask = targets.ne(pad_id)  # (C, T)
    token_lp = -F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id,
                                reduction="none").view_as(targets)  # (C, T)
    reward = (token_lp * mask).sum(1).detach()  # (C,) log p(y | s, a)
    n = mask.sum() if tokens is None else tokens
    choices = (choice_logp * mask).sum(1)  # (C,) log p(s | a) of the caption's choices
    term = -(reinforce * (reward - baseline) * choices).sum() / n
    term = term - entropy_weight * (entropy * mask).sum() / n
    return term, reward.mean()
