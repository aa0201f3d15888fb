"""Bahdanau (additive) attention over grid features, with Show-Attend-Tell's gating scalar.

The maths is written once, as functions over explicit weights and a K axis of queries per image:
the decoder's ``step`` runs them with K = 1, the GPU fast path (:mod:`captionkit.train.gpu`) with
the K captions of an image sharing its keys, and the Triton kernels there are tested against
:func:`additive_score` and :func:`attention_context`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def additive_score(keys: Tensor, q: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``e[b,k,n] = w . tanh(keys[b,n] + q[b,k]) + b``: keys (B, N, A), queries q (B, K, A),
    w (1, A), b (1,) -> (B, K, N)."""
    return F.linear(torch.tanh(keys.unsqueeze(1) + q.unsqueeze(2)), w, b).squeeze(-1)


def attention_context(alpha: Tensor, feats: Tensor) -> Tensor:
    """Each query's context: alpha (B, K, N) @ feats (B, N, D) -> (B, K, D) in feats' dtype."""
    return torch.bmm(alpha.to(feats.dtype), feats)  # (B, K, D)


def attention_weights(keys: Tensor, q: Tensor, w: Tensor, b: Tensor | None,
                      score=additive_score) -> Tensor:
    """alpha = softmax over the N regions of the score, (B, K, N)."""
    return torch.softmax(score(keys, q, w, b), dim=-1)  # (B, K, N); fp32 under autocast


def gate_value(gate_logit: Tensor) -> Tensor:
    """SAT's beta: how much of the context is let through, (B, K, 1) in (0, 1)."""
    return torch.sigmoid(gate_logit)


def additive_attend(feats: Tensor, keys: Tensor, q: Tensor, gate_logit: Tensor, w: Tensor,
                    b: Tensor | None, score=additive_score,
                    context=attention_context) -> tuple[Tensor, Tensor]:
    """The gated context (B, K, D) and alpha (B, K, N) for queries q (B, K, A) and gate logits
    (B, K, 1) over one image's keys (B, N, A) and features (B, N, D). ``score`` and ``context``
    may be swapped for kernels computing the same functions."""
    alpha = attention_weights(keys, q, w, b, score)  # (B, K, N)
    return context(alpha, feats) * gate_value(gate_logit), alpha  # (B, K, D), (B, K, N)


class AdditiveAttention(nn.Module):
    """score(h, f_i) = w^T tanh(W_f f_i + W_h h); alpha = softmax over the N regions; the
    context is gated by beta = sigmoid(w_g h).

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

    def query_layers(self) -> tuple[nn.Linear, nn.Linear]:
        """The layers applied to the hidden state: the query (A outputs), the gate logit (1)."""
        return self.hidden_proj, self.gate

    def score_weights(self) -> tuple[Tensor, Tensor]:
        """(w (1, A), b (1,)) of :func:`additive_score`."""
        return self.score.weight, self.score.bias

    def forward(self, feats: Tensor, keys: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Return the gated context (B, D) and the attention weights (B, N)."""
        q = self.hidden_proj(hidden).unsqueeze(1)  # (B, 1, A)
        g = self.gate(hidden).unsqueeze(1)  # (B, 1, 1)
        ctx, alpha = additive_attend(feats, keys, q, g, *self.score_weights())
        return ctx.squeeze(1), alpha.squeeze(1)  # (B, D), (B, N)
