"""Attention mechanisms over grid features, registered by name (``ATTENTIONS``).

One contract for all: ``project(feats) -> keys`` once per image (B, N, *), and
``forward(feats, keys, query, cell=None) -> (context (B, C), alpha (B, N))`` at every step.
Each class says what its query is (``QUERY``): ``"previous"``, the hidden state before the
cell (Show-Attend-Tell's order: attend, then feed the context to the cell) or ``"current"``,
the state the cell just produced from the word (Luong's and Lu's order: the context feeds the
output). ``cell`` is a :class:`CellView` of that step (the cell's input, its previous hidden
state and its new memory), which only the adaptive sentinel reads. ``context_dim`` (C) is D
except where a mechanism attends in another space (adaptive: the hidden size). Extras:

- ``SENTINEL`` mechanisms spend part of each step's weight on a non-visual sentinel: alpha sums
  to ``1 - beta`` over the N regions, and :func:`sentinel_beta` gives beta per word.
- ``STOCHASTIC`` mechanisms sample where to look while training; given ``record`` (a list),
  each training step appends ``(log p(choice) (B,), entropy (B,))`` for the REINFORCE loss
  (:func:`captionkit.train.losses.hard_attention_loss`).

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
- ``adaptive``: Lu et al. 2017, "Knowing when to look": a visual sentinel from the LSTM memory
  and an extended softmax over the N regions and the sentinel.
- ``hard``: Show-Attend-Tell's stochastic hard attention: one sampled region per step while
  training, the expected context or the argmax region at test time (``decoder.hard_decode``).
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captionkit.errors import ConfigError
from captionkit.registry import Registry

ATTENTIONS: Registry = Registry("attention")


class CellView(NamedTuple):
    """One step of the recurrent cell, for mechanisms that read it (the adaptive sentinel):
    the cell's input x (B, X), its previous hidden state (B, H) and its new memory (B, H)."""

    x: Tensor
    h_prev: Tensor
    memory: Tensor


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
    QUERY: ClassVar[str] = "previous"

    def __init__(self, feat_dim: int, hidden_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.context_dim = feat_dim
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

    def forward(self, feats: Tensor, keys: Tensor, hidden: Tensor,
                cell: CellView | None = None) -> tuple[Tensor, Tensor]:
        """Return the gated context (B, D) and the attention weights (B, N)."""
        q = self.hidden_proj(hidden).unsqueeze(1)  # (B, 1, A)
        g = self.gate(hidden).unsqueeze(1)  # (B, 1, 1)
        ctx, alpha = additive_attend(feats, keys, q, g, *self.score_weights())
        return ctx.squeeze(1), alpha.squeeze(1)  # (B, D), (B, N)


class GeneralAttention(nn.Module):
    """Luong's "general" score ``h^T W f_i``: the image side ``W f_i`` projected once per image
    (keys (B, N, H)), a dot product with the hidden state at each step; alpha = softmax over
    the N regions; the context ``alpha @ f`` (no gate). As in Luong et al., the query is the
    state the cell has just produced (``QUERY = "current"``) and the context feeds the output."""

    QUERY: ClassVar[str] = "current"

    def __init__(self, feat_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.context_dim = feat_dim
        self.w = nn.Linear(feat_dim, hidden_dim, bias=False)  # W f_i: (D) -> (H)

    def project(self, feats: Tensor) -> Tensor:
        return self.w(feats)  # (B, N, D) -> (B, N, H)

    def forward(self, feats: Tensor, keys: Tensor, hidden: Tensor,
                cell: CellView | None = None) -> tuple[Tensor, Tensor]:
        e = torch.bmm(keys, hidden.unsqueeze(2)).squeeze(2)  # (B, N, H) @ (B, H, 1) -> (B, N)
        alpha = torch.softmax(e, dim=1)  # (B, N)
        return torch.bmm(alpha.unsqueeze(1), feats).squeeze(1), alpha  # (B, D), (B, N)


class ScaledDotAttention(nn.Module):
    """Multi-head scaled dot-product attention with the hidden state as the query: per head
    ``softmax(q_h . k_hi / sqrt(d))`` over the N regions, values ``W_v f``, the heads'
    contexts concatenated and projected back to D. Keys and values are projected once per
    image (``keys`` holds both, (B, N, 2A)); the attention map is the mean over heads. The
    query is the current state, as a Transformer's query is the current position's."""

    QUERY: ClassVar[str] = "current"

    def __init__(self, feat_dim: int, hidden_dim: int, attention_dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.dim, self.context_dim = heads, attention_dim, feat_dim
        self.q, self.kv = head_projections(feat_dim, hidden_dim, attention_dim, heads)
        self.out = nn.Linear(attention_dim, feat_dim)

    def project(self, feats: Tensor) -> Tensor:
        return self.kv(feats)  # (B, N, D) -> (B, N, 2A): keys then values

    def forward(self, feats: Tensor, keys: Tensor, hidden: Tensor,
                cell: CellView | None = None) -> tuple[Tensor, Tensor]:
        ctx, alpha = multi_head(self.q(hidden), keys, self.heads)  # (B, A), (B, N)
        return self.out(ctx), alpha  # (B, D), (B, N)


def head_projections(feat_dim: int, hidden_dim: int, attention_dim: int,
                     heads: int) -> tuple[nn.Linear, nn.Linear]:
    """The query layer (H -> A) and the key-and-value layer (D -> 2A) of multi-head attention;
    ``attention_dim`` must split evenly into ``heads``."""
    if attention_dim % heads:
        raise ValueError(f"decoder.attention_dim {attention_dim} must be divisible by "
                         f"decoder.num_heads {heads}")
    return nn.Linear(hidden_dim, attention_dim), nn.Linear(feat_dim, 2 * attention_dim)


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
    through only what is relevant to the query (AoANet's linear layer followed by a GLU). As in
    AoANet's decoder, the query is the state the LSTM has just produced."""

    QUERY: ClassVar[str] = "current"

    def __init__(self, feat_dim: int, hidden_dim: int, attention_dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.context_dim = heads, feat_dim
        self.q, self.kv = head_projections(feat_dim, hidden_dim, attention_dim, heads)
        self.aoa = nn.Linear(attention_dim + hidden_dim, 2 * feat_dim)  # [i; g] from [v; h]

    def project(self, feats: Tensor) -> Tensor:
        return self.kv(feats)  # (B, N, D) -> (B, N, 2A): keys then values

    def forward(self, feats: Tensor, keys: Tensor, hidden: Tensor,
                cell: CellView | None = None) -> tuple[Tensor, Tensor]:
        v, alpha = multi_head(self.q(hidden), keys, self.heads)  # (B, A), (B, N)
        info_gate = self.aoa(torch.cat([v, hidden], dim=-1))  # (B, 2D)
        return F.glu(info_gate, dim=-1), alpha  # i * sigmoid(g): (B, D), (B, N)


class AdaptiveAttention(nn.Module):
    """Adaptive attention with a visual sentinel (Lu et al. 2017, "Knowing when to look").

    Regions ``v_i = ReLU(W_a f_i)`` live in the hidden space (H). The sentinel
    ``s_t = g_t * tanh(m_t)``, ``g_t = sigmoid(W_x x_t + W_h h_{t-1})``, is what the LSTM's
    memory m_t holds for the language model. With the current state h_t as the query,
    ``z_ti = w^T tanh(W_v v_i + W_g h_t)`` and the sentinel's score ``w^T tanh(W_s s_t + W_g h_t)``
    share one softmax over N + 1 entries; its last weight is beta_t, and the context is
    ``c_t = sum_i alpha_ti v_i + beta_t s_t`` (B, H). ``alpha`` (B, N) is the extended softmax's
    region part, so it sums to ``1 - beta_t``: how much the word looked at the image.
    """

    QUERY: ClassVar[str] = "current"
    SENTINEL: ClassVar[bool] = True

    def __init__(self, feat_dim: int, hidden_dim: int, attention_dim: int,
                 input_dim: int) -> None:
        super().__init__()
        self.context_dim, self.attention_dim = hidden_dim, attention_dim
        self.values = nn.Linear(feat_dim, hidden_dim)  # W_a: v_i in the hidden space
        self.keys = nn.Linear(hidden_dim, attention_dim)  # W_v
        self.query = nn.Linear(hidden_dim, attention_dim, bias=False)  # W_g
        self.sentinel_key = nn.Linear(hidden_dim, attention_dim, bias=False)  # W_s
        self.score = nn.Linear(attention_dim, 1)  # w
        self.gate_x = nn.Linear(input_dim, hidden_dim)  # W_x of the sentinel gate
        self.gate_h = nn.Linear(hidden_dim, hidden_dim, bias=False)  # W_h

    def project(self, feats: Tensor) -> Tensor:
        v = torch.relu(self.values(feats))  # (B, N, H)
        return torch.cat([self.keys(v), v], dim=-1)  # (B, N, A + H): keys then values

    def forward(self, feats: Tensor, keys: Tensor, hidden: Tensor,
                cell: CellView | None = None) -> tuple[Tensor, Tensor]:
        if cell is None:
            raise ValueError("adaptive attention reads the cell (its memory): pass cell=")
        k, v = keys.split([self.attention_dim, self.context_dim], dim=-1)  # (B, N, A), (B, N, H)
        gate = torch.sigmoid(self.gate_x(cell.x) + self.gate_h(cell.h_prev))  # (B, H)
        s = gate * torch.tanh(cell.memory)  # (B, H) the visual sentinel
        q = self.query(hidden)  # (B, A)
        z = self.score(torch.tanh(k + q.unsqueeze(1))).squeeze(-1)  # (B, N)
        zs = self.score(torch.tanh(self.sentinel_key(s) + q))  # (B, 1)
        a = torch.softmax(torch.cat([z, zs], dim=1), dim=1)  # (B, N + 1)
        alpha, beta = a[:, :-1], a[:, -1:]  # (B, N), (B, 1)
        ctx = torch.bmm(alpha.unsqueeze(1).to(v.dtype), v).squeeze(1) + beta * s  # (B, H)
        return ctx, alpha


def sentinel_beta(alphas: Tensor) -> Tensor:
    """beta (the sentinel's weight, 0..1) of each step of a SENTINEL mechanism from its maps
    alphas (..., N): the regions' weights sum to 1 - beta."""
    return (1.0 - alphas.float().sum(-1)).clamp(0.0, 1.0)


class HardAttention(nn.Module):
    """Show-Attend-Tell's stochastic "hard" attention: SAT's score ``w^T tanh(W_f f_i + W_h h)``
    gives alpha; while training, one region s ~ Multinoulli(alpha) is sampled per step and its
    feature is the context, except that with probability ``expected_p`` (the paper's 0.5) the
    step uses the expected context ``alpha @ f`` instead. The sampling has no gradient; the
    REINFORCE estimator (moving-average baseline, entropy bonus) trains the scores through the
    ``record``ed log-probabilities of the choices. At test time ``decode`` says what is used:
    ``"argmax"`` (the most likely region's feature) or ``"expected"`` (alpha @ f)."""

    QUERY: ClassVar[str] = "previous"
    STOCHASTIC: ClassVar[bool] = True

    def __init__(self, feat_dim: int, hidden_dim: int, attention_dim: int,
                 decode: str = "argmax", expected_p: float = 0.5) -> None:
        super().__init__()
        self.context_dim, self.decode, self.expected_p = feat_dim, decode, expected_p
        self.feat_proj = nn.Linear(feat_dim, attention_dim)
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    def project(self, feats: Tensor) -> Tensor:
        return self.feat_proj(feats)  # (B, N, D) -> (B, N, A)

    def forward(self, feats: Tensor, keys: Tensor, hidden: Tensor, cell: CellView | None = None,
                record: list | None = None) -> tuple[Tensor, Tensor]:
        q = self.hidden_proj(hidden).unsqueeze(1)  # (B, 1, A)
        alpha = attention_weights(keys, q, self.score.weight, self.score.bias).squeeze(1)  # (B, N)
        expected = attention_context(alpha.unsqueeze(1), feats).squeeze(1)  # (B, D)
        if not self.training:
            if self.decode == "expected":
                return expected, alpha
            pick = alpha.argmax(dim=1, keepdim=True)  # (B, 1)
            return _region(feats, pick), alpha
        pick = torch.multinomial(alpha.detach().float(), 1)  # (B, 1) sampled region
        use_expected = torch.rand(pick.shape, device=feats.device) < self.expected_p  # (B, 1)
        ctx = torch.where(use_expected, expected, _region(feats, pick))  # (B, D)
        if record is not None:
            logp = torch.log(alpha.float().gather(1, pick).clamp_min(1e-12)).squeeze(1)  # (B,)
            plogp = alpha.float() * torch.log(alpha.float().clamp_min(1e-12))
            record.append((logp * (~use_expected.squeeze(1)), -plogp.sum(1)))  # (B,), (B,)
        return ctx, alpha


def _region(feats: Tensor, pick: Tensor) -> Tensor:
    """The feature of one region per image: feats (B, N, D), pick (B, 1) -> (B, D)."""
    return feats.gather(1, pick.unsqueeze(-1).expand(-1, -1, feats.size(-1))).squeeze(1)


@ATTENTIONS.register("additive", fields=("attention_dim",),
                     description="Bahdanau / Show-Attend-Tell soft attention, SAT's gate")
def additive(feat_dim: int, hidden_dim: int, cfg, input_dim: int = 0) -> nn.Module:
    return AdditiveAttention(feat_dim, hidden_dim, cfg.attention_dim)


@ATTENTIONS.register("general", fields=(),
                     description="Luong multiplicative attention, h^T W f_i")
def general(feat_dim: int, hidden_dim: int, cfg, input_dim: int = 0) -> nn.Module:
    return GeneralAttention(feat_dim, hidden_dim)


def _check_heads(cfg) -> None:
    if cfg.attention_dim % cfg.num_heads:
        raise ConfigError(f"decoder.attention_dim ({cfg.attention_dim}) must be divisible by "
                          f"decoder.num_heads ({cfg.num_heads}) for {cfg.attention} attention")


@ATTENTIONS.register("scaled_dot", fields=("attention_dim", "num_heads"), check=_check_heads,
                     description="multi-head scaled dot-product, maps averaged over heads")
def scaled_dot(feat_dim: int, hidden_dim: int, cfg, input_dim: int = 0) -> nn.Module:
    return ScaledDotAttention(feat_dim, hidden_dim, cfg.attention_dim, cfg.num_heads)


@ATTENTIONS.register("aoa", fields=("attention_dim", "num_heads"), check=_check_heads,
                     description="attention on attention: information vector x sigmoid gate")
def aoa(feat_dim: int, hidden_dim: int, cfg, input_dim: int = 0) -> nn.Module:
    return AoAAttention(feat_dim, hidden_dim, cfg.attention_dim, cfg.num_heads)


@ATTENTIONS.register("adaptive", fields=("attention_dim",), sentinel=True,
                     description="Lu et al. 2017 visual sentinel: knowing when to look")
def adaptive(feat_dim: int, hidden_dim: int, cfg, input_dim: int) -> nn.Module:
    return AdaptiveAttention(feat_dim, hidden_dim, cfg.attention_dim, input_dim)


@ATTENTIONS.register("hard", fields=("attention_dim",), stochastic=True,
                     description="Show-Attend-Tell stochastic hard attention (REINFORCE)")
def hard(feat_dim: int, hidden_dim: int, cfg, input_dim: int) -> nn.Module:
    return HardAttention(feat_dim, hidden_dim, cfg.attention_dim, cfg.hard_decode)


def build_attention(cfg, feat_dim: int, hidden_dim: int, input_dim: int = 0) -> nn.Module:
    """The mechanism ``cfg.attention`` names (``cfg``: a DecoderConfig); ``input_dim``: the
    width of the recurrent cell's input (read by mechanisms that watch the cell)."""
    return ATTENTIONS.get(cfg.attention)(feat_dim, hidden_dim, cfg, input_dim)


def fast_path_attention(attention: nn.Module) -> bool:
    """Whether the mechanism's own class declares the GPU fast path (never inherited)."""
    return bool(vars(type(attention)).get("FAST_PATH", False))
