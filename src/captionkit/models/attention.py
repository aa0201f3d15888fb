"""Bahdanau (additive) attention over grid features, with Show-Attend-Tell's gating scalar."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AdditiveAttention(nn.Module):
    """score(h, f_i) = w^T tanh(W_f f_i + W_h h); alpha = softmax over the N regions.

    The feature projection ``W_f f`` depends only on the image, so callers compute it once with
    :meth:`project` and pass it to every step.
    """

    def __init__(self, feat_dim: int, hidden_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.feat_proj = nn.Linear(feat_dim, attention_dim)
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)
        self.gate = nn.Linear(hidden_dim, 1)  # SAT's beta: how much context to let through

    def project(self, feats: Tensor) -> Tensor:
        return self.feat_proj(feats)  # (B, N, D) -> (B, N, A)

    def forward(self, feats: Tensor, keys: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Return the gated context (B, D) and the attention weights (B, N)."""
        e = self.score(torch.tanh(keys + self.hidden_proj(hidden).unsqueeze(1)))  # (B, N, 1)
        alpha = torch.softmax(e.squeeze(-1), dim=1)  # (B, N)
        ctx = torch.bmm(alpha.unsqueeze(1), feats).squeeze(1)  # (B, 1, N) @ (B, N, D) -> (B, D)
        beta = torch.sigmoid(self.gate(hidden))  # (B, 1)
        return beta * ctx, alpha
