"""RNN decoders with attention (``lstm``, ``gru``) behind one contract.

Every decoder implements:

- ``forward(feats, tokens) -> (logits, alphas)``: teacher forcing. ``tokens`` (B, T) starts with
  <start>; ``logits[:, t]`` (B, T, V) predicts ``tokens[:, t + 1]``; ``alphas`` is (B, T, N).
- ``init_state(feats) -> state``: a tuple of tensors whose first dimension is the batch.
- ``step(feats, state, token) -> (logits, state, alpha)``: one generation step, (B, V) and (B, N).

Decoding (captionkit.infer.decoding) needs nothing else, whatever the decoder. The RNN decoders
(``lstm``, ``gru``, ``updown``) take any mechanism of the attention registry
(``decoder.attention``); ``forward(..., extras={})`` also fills ``extras`` with the per-step
choice log-probabilities and entropies of a stochastic (hard) mechanism, for its REINFORCE loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captionkit.config import DecoderConfig
from captionkit.errors import ConfigError
from captionkit.models.attention import ATTENTIONS, CellView, build_attention
from captionkit.registry import Registry

State = tuple[Tensor, ...]
DECODERS: Registry[Callable[..., nn.Module]] = Registry("decoder")


def lstm_update(xg: Tensor, hg: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The LSTM cell's gate maths (``nn.LSTMCell``'s, to the bit): the input's terms xg and the
    hidden state's hg (..., 4H), in the order input, forget, cell, output -> new (h, c)."""
    i, f, g, o = (hg + xg).chunk(4, dim=-1)  # (..., H) each
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_update(xg: Tensor, hg: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The GRU cell's gate maths (``nn.GRUCell``'s, to the bit): terms (..., 3H) in the order
    reset, update, new; ``c`` passes through (a GRU has no cell state)."""
    xr, xz, xn = xg.chunk(3, dim=-1)  # (..., H) each
    hr, hz, hn = hg.chunk(3, dim=-1)
    r, z = torch.sigmoid(hr + xr), torch.sigmoid(hz + xz)
    n = torch.tanh(xn + hn * r)
    return (h - n) * z + n, c


class AttentionRNNDecoder(nn.Module):
    """Show-Attend-Tell decoder: attend with the previous hidden state, feed [embedding; context]
    to the recurrent cell, and predict the next word with SAT's deep output
    ``L_o(E y_{t-1} + L_h h_t + L_z z_t)`` from the embedding, new hidden state and context.
    A mechanism whose query is the current state (``QUERY = "current"``: Luong, Lu, AoANet)
    runs in their order instead: the cell reads [embedding; mean feature], the new state
    attends, and the context feeds the same deep output.

    The maths lives in small public pieces (:meth:`initial_hidden`, the attention's functions,
    :meth:`input_weights`, :attr:`cell_update`, :meth:`deep_output`, :meth:`output_head`) that
    ``forward``/``step`` and the GPU fast path (:mod:`captionkit.train.gpu.grouped`) both call.
    ``FAST_PATH`` declares, per class and never inherited (:func:`fast_path_declared`), that
    the fast path computes this class's maths: a subclass that changes any of it trains on the
    reference path unless it declares itself.
    """

    cell_type = "lstm"
    cell_update = staticmethod(lstm_update)  # the gate maths (a plain function: compilable)
    FAST_PATH: ClassVar[bool] = True

    def __init__(self, vocab_size: int, feat_dim: int, cfg: DecoderConfig) -> None:
        super().__init__()
        h = cfg.hidden_dim
        self.vocab_size, self.hidden_dim = vocab_size, h
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim)
        # decoder.attention; the cell reads [embedding; context or mean feature] (E + D)
        self.attention = build_attention(cfg, feat_dim, h, cfg.embed_dim + feat_dim)
        self.attend_first = self.attention.QUERY == "previous"
        cell = nn.LSTMCell if self.cell_type == "lstm" else nn.GRUCell
        self.cell = cell(cfg.embed_dim + feat_dim, h)  # its weights; the maths is cell_update
        self.init_h = nn.Linear(feat_dim, h)
        self.init_c = nn.Linear(feat_dim, h) if self.cell_type == "lstm" else None
        self.dropout = nn.Dropout(cfg.dropout)
        # SAT's deep output: the word is read from the hidden state, the context attended at
        # this step and the previous word together (so where it looks matters for what it says).
        self.out_h = nn.Linear(h, cfg.embed_dim)
        self.out_ctx = nn.Linear(self.attention.context_dim, cfg.embed_dim, bias=False)
        self.out = nn.Linear(cfg.embed_dim, vocab_size)

    def initial_hidden(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """(h, c) (B, H) from the mean feature (c is zeros for a GRU)."""
        mean = feats.mean(dim=1)  # (B, D)
        h = torch.tanh(self.init_h(mean))  # (B, H)
        c = torch.tanh(self.init_c(mean)) if self.init_c is not None else torch.zeros_like(h)
        return h, c

    def init_state(self, feats: Tensor, keys: Tensor | None = None) -> State:
        """(h, c, keys): hidden states from the mean feature, and the attention keys (computed
        here unless the caller already projected them)."""
        h, c = self.initial_hidden(feats)
        if keys is None:
            keys = self.attention.project(feats)  # (B, N, A)
        return h, c, keys

    def input_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """The cell's input weight split as the cell reads its input, [embedding; context]:
        (w_emb (G, E), w_ctx (G, D), bias (G,)); G = 4H (LSTM) or 3H (GRU)."""
        e = self.embed.embedding_dim
        w = self.cell.weight_ih
        return w[:, :e], w[:, e:], self.cell.bias_ih

    def recurrent_layer(self) -> tuple[Tensor, Tensor]:
        """(weight (G, H), bias (G,)) of the hidden state's terms in the gates."""
        return self.cell.weight_hh, self.cell.bias_hh

    def deep_output(self, emb: Tensor, h: Tensor, ctx: Tensor) -> Tensor:
        """SAT's deep output before the vocabulary layer, (..., E)."""
        return emb + self.out_h(h) + self.out_ctx(ctx)

    def output_head(self) -> tuple[nn.Module, nn.Linear]:
        """(dropout, vocabulary layer): ``logits = out(dropout(deep_output))``."""
        return self.dropout, self.out

    def _advance(self, feats: Tensor, state: State, emb: Tensor,
                 record: list | None = None) -> tuple[Tensor, State, Tensor]:
        """One recurrence; returns the pre-vocabulary output (B, E), the new state, alpha."""
        h, c, keys = state
        extra = {} if record is None else {"record": record}
        if self.attend_first:
            ctx, alpha = self.attention(feats, keys, h, **extra)  # (B, C), (B, N)
            x = torch.cat([emb, ctx], dim=1)  # (B, E + D): the order input_weights() splits
        else:
            x = torch.cat([emb, feats.mean(dim=1)], dim=1)  # (B, E + D)
        xg = F.linear(x, self.cell.weight_ih, self.cell.bias_ih)  # (B, G)
        h_new, c = self.cell_update(xg, F.linear(h, *self.recurrent_layer()), h, c)  # (B, H)
        if not self.attend_first:
            memory = c if self.cell_type == "lstm" else h_new  # a GRU's memory is its state
            ctx, alpha = self.attention(feats, keys, h_new, CellView(x, h, memory), **extra)
        return self.deep_output(emb, h_new, ctx), (h_new, c, keys), alpha

    def step(self, feats: Tensor, state: State, token: Tensor) -> tuple[Tensor, State, Tensor]:
        """One generation step from the previous token (B,) -> logits (B, V), alpha (B, N)."""
        out, state, alpha = self._advance(feats, state, self.embed(token))
        return self.out(self.dropout(out)), state, alpha  # (B, V)

    def forward(self, feats: Tensor, tokens: Tensor, image_index: Tensor | None = None,
                extras: dict | None = None) -> tuple[Tensor, Tensor]:
        """Teacher forcing over tokens (C, T) -> logits (C, T, V), alphas (C, T, N).

        ``image_index`` (C,) maps each caption to a row of ``feats`` (B, N, D), so the attention
        projection is computed once per image rather than once per caption. Steps after a
        caption's last real token are skipped (their outputs are zero; the loss masks them).
        """
        return teacher_forcing(self, feats, tokens, image_index, extras)


def teacher_forcing(decoder: nn.Module, feats: Tensor, tokens: Tensor,
                    image_index: Tensor | None = None,
                    extras: dict | None = None) -> tuple[Tensor, Tensor]:
    """The RNN decoders' ``forward``: ``decoder._advance(feats, state, emb, record)`` over the
    steps of tokens (C, T), captions sorted by length so each step runs only those still alive.
    State tensors are per caption, the last one the attention keys (constant). With ``extras``
    and a stochastic mechanism, ``extras["choice_logp"]``/``["entropy"]`` (C, T) are filled."""
    keys = decoder.attention.project(feats)  # (B, N, A): once per image
    if image_index is not None:
        feats, keys = feats[image_index], keys[image_index]  # (C, N, D), (C, N, A)
    nonpad = tokens.ne(0)  # (C, T) <pad> is id 0
    last = tokens.size(1) - nonpad.flip(1).int().argmax(1)  # (C,) one past the last real token
    lengths = torch.where(nonpad.any(1), last, torch.zeros_like(last))
    order = lengths.argsort(descending=True)
    feats, keys, emb = feats[order], keys[order], decoder.embed(tokens[order])  # (C, T, E)
    active = [int(n) for n in (lengths.unsqueeze(1) > torch.arange(tokens.size(1),
                               device=tokens.device)).sum(0)]  # captions alive at step t
    state = decoder.init_state(feats, keys)[:-1]  # per-caption tensors, keys apart
    outs = emb.new_zeros(emb.size(0), tokens.size(1), decoder.out.in_features)  # (C, T, E)
    alphas = feats.new_zeros(feats.size(0), tokens.size(1), feats.size(1))  # (C, T, N)
    record = [] if extras is not None and stochastic(decoder) else None
    choice = feats.new_zeros(feats.size(0), tokens.size(1), dtype=torch.float32)  # (C, T)
    entropy = torch.zeros_like(choice)
    for t, n in enumerate(active):
        if n == 0:
            break
        now = (*(s[:n] for s in state), keys[:n])
        out, new, alpha = decoder._advance(feats[:n], now, emb[:n, t], record)
        state = tuple(torch.cat([a, s[n:]]) for a, s in zip(new[:-1], state, strict=True))
        outs[:n, t], alphas[:n, t] = out, alpha
        if record:
            choice[:n, t], entropy[:n, t] = record.pop()
    inverse = order.argsort()
    if record is not None:
        extras["choice_logp"], extras["entropy"] = choice[inverse], entropy[inverse]
    logits = decoder.out(decoder.dropout(outs))  # (C, T, V)
    return logits[inverse], alphas[inverse]


def stochastic(decoder: nn.Module) -> bool:
    """Whether the decoder's attention samples where to look while training (``hard``)."""
    return bool(getattr(getattr(decoder, "attention", None), "STOCHASTIC", False))


class GRUDecoder(AttentionRNNDecoder):
    """The TensorFlow tutorial's decoder: the same attention, a GRU cell."""

    cell_type = "gru"
    cell_update = staticmethod(gru_update)
    FAST_PATH: ClassVar[bool] = True


def fast_path_declared(decoder: nn.Module) -> bool:
    """Whether ``decoder``'s own class (not a base class) declares ``FAST_PATH``: the GPU fast
    path computes exactly that class's maths."""
    return bool(vars(type(decoder)).get("FAST_PATH", False))


RNN_FIELDS = ("embed_dim", "hidden_dim", "attention", "dropout")  # + the attention's own


@DECODERS.register("lstm", fields=RNN_FIELDS,
                   description="Show-Attend-Tell: additive attention, gate, LSTM, deep output")
def lstm(vocab_size: int, feat_dim: int, cfg: DecoderConfig) -> nn.Module:
    return AttentionRNNDecoder(vocab_size, feat_dim, cfg)


@DECODERS.register("gru", fields=RNN_FIELDS,
                   description="the TensorFlow tutorial's: the same attention, a GRU cell")
def gru(vocab_size: int, feat_dim: int, cfg: DecoderConfig) -> nn.Module:
    return GRUDecoder(vocab_size, feat_dim, cfg)


def build_decoder(cfg: DecoderConfig, vocab_size: int, feat_dim: int) -> nn.Module:
    """Build the registered decoder named by ``cfg.name``."""
    return DECODERS.get(cfg.name)(vocab_size, feat_dim, cfg)


def check_decoder_config(cfg: DecoderConfig) -> None:
    """Checks that apply to the named decoder and its attention mechanism only (their
    registered ``check``), before any work: an unknown name raises
    :class:`~captionkit.errors.UnknownNameError` listing the choices, a bad field or an
    unsupported decoder/mechanism pair :class:`~captionkit.errors.ConfigError`."""
    info = DECODERS.info(cfg.name)
    if "attention" in info.get("fields", ()):
        check = ATTENTIONS.info(cfg.attention).get("check")
        if check is not None:
            check(cfg)
    elif cfg.attention != DecoderConfig.attention:
        raise ConfigError(f"decoder.attention={cfg.attention!r} does not apply to the "
                          f"{cfg.name} decoder (it has its own); decoders that take a "
                          f"mechanism: {', '.join(attention_decoders())}")
    if info.get("check") is not None:
        info["check"](cfg)


def attention_decoders() -> list[str]:
    """The decoders that take ``decoder.attention``."""
    return [n for n in DECODERS.names() if "attention" in DECODERS.info(n).get("fields", ())]


def decoder_fields(cfg: DecoderConfig) -> tuple[str, ...]:
    """The ``decoder.*`` config fields the named decoder reads (its architecture, its
    attention mechanism's, and dropout)."""
    fields = tuple(DECODERS.info(cfg.name).get("fields", ()))
    if "attention" in fields:
        fields += tuple(ATTENTIONS.info(cfg.attention).get("fields", ()))
    return fields


def has_sentinel(cfg: DecoderConfig) -> bool:
    """Whether the configured decoder attends with a sentinel mechanism (``adaptive``): its
    per-word maps sum to 1 - beta."""
    return ("attention" in DECODERS.info(cfg.name).get("fields", ())
            and bool(ATTENTIONS.info(cfg.attention).get("sentinel", False)))


def list_decoders() -> list[str]:
    return DECODERS.names()
