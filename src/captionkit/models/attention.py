"""Attention mechanisms over grid features, registered by name (``ATTENTIONS``).

One contract for all: ``project(feats) -> keys`` once per image (B, N, *), and
``forward(feats, keys, query) -> (context (B, D), alpha (B, N))`` at every step, for the
decoder's query (its previous hidden state, (B, H)).

- ``additive``: Bahdanau / Show-Attend-Tell soft attention with SAT's gating scalar. Its maths
  is written once, as functions over explicit weights and a K axis of queries per image: the
  decoder's ``step`` runs them with K = 1, the GPU fast path (:mod:`captionkit.train.gpu`) with
  the K captions of an image sharing its keys, and the Triton kernels there are tested against
  :func:`additive_score` and :func:`attention_context`. The only mechanism the fast path runs.
- ``general``: Luong et al. 2015 multiplicative attention, ``score = h^T W f_i``.
- ``scaled_dot``: multi-head scaled dot-product attention (Vaswani et al. 2017) with the hidden
  state as the query; the map is the mean over heads.
- ``aoa``: attention on attention (Huang et al. 2019): an information vector and a sigmoid gate
  on top of the multi-head attended vector.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captionkit.errors import ConfigError
from captionkit.registry import Registry

ATTENTIONS: Registry = Registry("attention")


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
    :meth:`project` and pass it to every step. ``FAST_PATH``: the GPU fast path computes this
    class's maths (declared per class, like the decoders').
    """

    FAST_PATH: ClassVar[bool] = True

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


class GeneralAttention(nn.Module):
    """Luong's "general" score ``h^T W f_i``: the image side ``W f_i`` projected once per image
    (keys (B, N, H)), a dot product with the hidden state at each step; alpha = softmax over
    the N regions; the context ``alpha @ f`` (no gate)."""

    def __init__(self, feat_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w = nn.Linear(feat_dim, hidden_dim, bias=False)  # W f_i: (D) -> (H)

    def project(self, feats: Tensor) -> Tensor:
        return self.w(feats)  # (B, N, D) -> (B, N, H)

    def forward(self, feats: Tensor, keys: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        e = torch.bmm(keys, hidden.unsqueeze(2)).squeeze(2)  # (B, N, H) @ (B, H, 1) -> (B, N)
        alpha = torch.softmax(e, dim=1)  # (B, N)
        return torch.bmm(alpha.unsqueeze(1), feats).squeeze(1), alpha  # (B, D), (B, N)


class ScaledDotAttention(nn.Module):
    """Multi-head scaled dot-product attention with the hidden state as the query: per head
    ``softmax(q_h . k_hi / sqrt(d))`` over the N regions, values ``W_v f``, the heads'
    contexts concatenated and projected back to D. Keys and values are projected once per
    image (``keys`` holds both, (B, N, 2A)); the attention map is the mean over heads."""

    def __init__(self, feat_dim: int, hidden_dim: int, attention_dim: int, heads: int) -> None:
        super().__init__()
        if attention_dim % heads:
            raise ValueError(f"decoder.attention_dim {attention_dim} must be divisible by "
                             f"decoder.num_heads {heads}")
        self.heads, self.dim = heads, attention_dim
        self.q = nn.Linear(hidden_dim, attention_dim)
        self.kv = nn.Linear(feat_dim, 2 * attention_dim)
        self.out = nn.Linear(attention_dim, feat_dim)

    def project(self, feats: Tensor) -> Tensor:
        return self.kv(feats)  # (B, N, D) -> (B, N, 2A): keys then values

    def forward(self, feats: Tensor, keys: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        ctx, alpha = multi_head(self.q(hidden), keys, self.heads)  # (B, A), (B, N)
        return self.out(ctx), alpha  # (B, D), (B, N)


def multi_head(q: Tensor, keys: Tensor, heads: int) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention of queries q (B, A) over keys and values ``keys``
    (B, N, 2A), ``heads`` heads: the heads' contexts concatenated (B, A) and the map averaged
    over heads (B, N)."""
    B, N, _ = keys.shape
    a = q.size(-1)
    d = a // heads
    k, v = keys.view(B, N, 2, heads, d).permute(2, 0, 3, 1, 4)  # (B, heads, N, d) each
    w = torch.softmax(q.view(B, heads, 1, d) @ k.transpose(-1, -2) / math.sqrt(d),
                      dim=-1)  # (B, heads, 1, N)
    return (w @ v).reshape(B, a), w.mean(dim=1).squeeze(1)  # (B, A), (B, N)


class AoAAttention(nn.Module):
    """Attention on attention (Huang et al. 2019): multi-head scaled dot-product attention
    gives the attended vector v; an information vector ``i = W_i [v; h] + b_i`` and an attention
    gate ``g = sigmoid(W_g [v; h] + b_g)`` on top of it, context ``g * i`` (B, D): the gate lets
    through only what is relevant to the query (AoANet's linear layer followed by a GLU)."""

    def __init__(self, feat_dim: int, hidden_dim: int, attention_dim: int, heads: int) -> None:
        super().__init__()
        if attention_dim % heads:
            raise ValueError(f"decoder.attention_dim {attention_dim} must be divisible by "
                             f"decoder.num_heads {heads}")
        self.heads = heads
        self.q = nn.Linear(hidden_dim, attention_dim)
        self.kv = nn.Linear(feat_dim, 2 * attention_dim)
        self.aoa = nn.Linear(attention_dim + hidden_dim, 2 * feat_dim)  # [i; g] from [v; h]

    def project(self, feats: Tensor) -> Tensor:
        return self.kv(feats)  # (B, N, D) -> (B, N, 2A): keys then values

    def forward(self, feats: Tensor, keys: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        v, alpha = multi_head(self.q(hidden), keys, self.heads)  # (B, A), (B, N)
        info_gate = self.aoa(torch.cat([v, hidden], dim=-1))  # (B, 2D)
        return F.glu(info_gate, dim=-1), alpha  # i * sigmoid(g): (B, D), (B, N)


@ATTENTIONS.register("additive", fields=("attention_dim",),
                     description="Bahdanau / Show-Attend-Tell soft attention, SAT's gate")
def additive(feat_dim: int, hidden_dim: int, cfg) -> nn.Module:
    return AdditiveAttention(feat_dim, hidden_dim, cfg.attention_dim)


@ATTENTIONS.register("general", fields=(),
                     description="Luong multiplicative attention, h^T W f_i")
def general(feat_dim: int, hidden_dim: int, cfg) -> nn.Module:
    return GeneralAttention(feat_dim, hidden_dim)


def _check_heads(cfg) -> None:
    if cfg.attention_dim % cfg.num_heads:
        raise ConfigError(f"decoder.attention_dim ({cfg.attention_dim}) must be divisible by "
                          f"decoder.num_heads ({cfg.num_heads}) for {cfg.attention} attention")


@ATTENTIONS.register("scaled_dot", fields=("attention_dim", "num_heads"), check=_check_heads,
                     description="multi-head scaled dot-product, maps averaged over heads")
def scaled_dot(feat_dim: int, hidden_dim: int, cfg) -> nn.Module:
    return ScaledDotAttention(feat_dim, hidden_dim, cfg.attention_dim, cfg.num_heads)


@ATTENTIONS.register("aoa", fields=("attention_dim", "num_heads"), check=_check_heads,
                     description="attention on attention: information vector x sigmoid gate")
def aoa(feat_dim: int, hidden_dim: int, cfg) -> nn.Module:
    return AoAAttention(feat_dim, hidden_dim, cfg.attention_dim, cfg.num_heads)


def build_attention(cfg, feat_dim: int, hidden_dim: int) -> nn.Module:
    """The mechanism ``cfg.attention`` names (``cfg``: a DecoderConfig)."""
    return ATTENTIONS.get(cfg.attention)(feat_dim, hidden_dim, cfg)


def fast_path_attention(attention: nn.Module) -> bool:
    """Whether the mechanism's own class declares the GPU fast path (never inherited)."""
    return bool(vars(type(attention)).get("FAST_PATH", False))
