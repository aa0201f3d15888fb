"""RNN decoders with attention (``lstm``, ``gru``) behind one contract.

Every decoder implements:

- ``forward(feats, tokens) -> (logits, alphas)``: teacher forcing. ``tokens`` (B, T) starts with
  <start>; ``logits[:, t]`` (B, T, V) predicts ``tokens[:, t + 1]``; ``alphas`` is (B, T, N).
- ``init_state(feats) -> state``: a tuple of tensors whose first dimension is the batch.
- ``step(feats, state, token) -> (logits, state, alpha)``: one generation step, (B, V) and (B, N).

Decoding (captionkit.infer.decoding) needs nothing else, whatever the decoder.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from captionkit.config import DecoderConfig
from captionkit.models.attention import AdditiveAttention
from captionkit.registry import Registry

State = tuple[Tensor, ...]
DECODERS: Registry[Callable[..., nn.Module]] = Registry("decoder")


class AttentionRNNDecoder(nn.Module):
    """Show-Attend-Tell decoder: attend with the previous hidden state, feed [embedding; context]
    to the recurrent cell, and predict the next word with SAT's deep output
    ``L_o(E y_{t-1} + L_h h_t + L_z z_t)`` from the embedding, new hidden state and context."""

    cell_type = "lstm"

    def __init__(self, vocab_size: int, feat_dim: int, cfg: DecoderConfig) -> None:
        super().__init__()
        h = cfg.hidden_dim
        self.vocab_size, self.hidden_dim = vocab_size, h
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim)
        self.attention = AdditiveAttention(feat_dim, h, cfg.attention_dim)
        cell = nn.LSTMCell if self.cell_type == "lstm" else nn.GRUCell
        self.cell = cell(cfg.embed_dim + feat_dim, h)
        self.init_h = nn.Linear(feat_dim, h)
        self.init_c = nn.Linear(feat_dim, h) if self.cell_type == "lstm" else None
        self.dropout = nn.Dropout(cfg.dropout)
        # SAT's deep output: the word is read from the hidden state, the context attended at
        # this step and the previous word together (so where it looks matters for what it says).
        self.out_h = nn.Linear(h, cfg.embed_dim)
        self.out_ctx = nn.Linear(feat_dim, cfg.embed_dim, bias=False)
        self.out = nn.Linear(cfg.embed_dim, vocab_size)

    def init_state(self, feats: Tensor, keys: Tensor | None = None) -> State:
        """(h, c, keys): hidden states from the mean feature, and the attention keys (computed
        here unless the caller already projected them)."""
        mean = feats.mean(dim=1)  # (B, D)
        h = torch.tanh(self.init_h(mean))  # (B, H)
        c = torch.tanh(self.init_c(mean)) if self.init_c is not None else torch.zeros_like(h)
        if keys is None:
            keys = self.attention.project(feats)  # (B, N, A)
        return h, c, keys

    def _advance(self, feats: Tensor, state: State, emb: Tensor) -> tuple[Tensor, State, Tensor]:
        """One recurrence; returns the pre-vocabulary output (B, E), the new state, alpha."""
        h, c, keys = state
        ctx, alpha = self.attention(feats, keys, h)  # (B, D), (B, N)
        x = torch.cat([emb, ctx], dim=1)  # (B, E + D)
        if self.cell_type == "lstm":
            h, c = self.cell(x, (h, c))
        else:
            h = self.cell(x, h)
        out = emb + self.out_h(h) + self.out_ctx(ctx)  # (B, E)
        return out, (h, c, keys), alpha

    def step(self, feats: Tensor, state: State, token: Tensor) -> tuple[Tensor, State, Tensor]:
        """One generation step from the previous token (B,) -> logits (B, V), alpha (B, N)."""
        out, state, alpha = self._advance(feats, state, self.embed(token))
        return self.out(self.dropout(out)), state, alpha  # (B, V)

    def forward(self, feats: Tensor, tokens: Tensor,
                image_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Teacher forcing over tokens (C, T) -> logits (C, T, V), alphas (C, T, N).

        ``image_index`` (C,) maps each caption to a row of ``feats`` (B, N, D), so the attention
        projection is computed once per image rather than once per caption. Steps after a
        caption's last real token are skipped (their outputs are zero; the loss masks them).
        """
        keys = self.attention.project(feats)  # (B, N, A): once per image
        if image_index is not None:
            feats, keys = feats[image_index], keys[image_index]  # (C, N, D), (C, N, A)
        nonpad = tokens.ne(0)  # (C, T) <pad> is id 0
        last = tokens.size(1) - nonpad.flip(1).int().argmax(1)  # (C,) one past the last real token
        lengths = torch.where(nonpad.any(1), last, torch.zeros_like(last))
        order = lengths.argsort(descending=True)
        feats, keys, emb = feats[order], keys[order], self.embed(tokens[order])  # (C, T, E)
        active = [int(n) for n in (lengths.unsqueeze(1) > torch.arange(tokens.size(1),
                                   device=tokens.device)).sum(0)]  # captions alive at step t
        h, c, keys = self.init_state(feats, keys)
        outs = emb.new_zeros(emb.size(0), tokens.size(1), emb.size(2))  # (C, T, E)
        alphas = feats.new_zeros(feats.size(0), tokens.size(1), feats.size(1))  # (C, T, N)
        for t, n in enumerate(active):
            if n == 0:
                break
            state = (h[:n], c[:n], keys[:n])
            out, (h_n, c_n, _), alpha = self._advance(feats[:n], state, emb[:n, t])
            h, c = torch.cat([h_n, h[n:]]), torch.cat([c_n, c[n:]])
            outs[:n, t], alphas[:n, t] = out, alpha
        inverse = order.argsort()
        logits = self.out(self.dropout(outs))  # (C, T, V)
        return logits[inverse], alphas[inverse]


class GRUDecoder(AttentionRNNDecoder):
    """The TensorFlow tutorial's decoder: the same attention, a GRU cell."""

    cell_type = "gru"


@DECODERS.register("lstm")
def lstm(vocab_size: int, feat_dim: int, cfg: DecoderConfig) -> nn.Module:
    return AttentionRNNDecoder(vocab_size, feat_dim, cfg)


@DECODERS.register("gru")
def gru(vocab_size: int, feat_dim: int, cfg: DecoderConfig) -> nn.Module:
    return GRUDecoder(vocab_size, feat_dim, cfg)


def build_decoder(cfg: DecoderConfig, vocab_size: int, feat_dim: int) -> nn.Module:
    """Build the registered decoder named by ``cfg.name``."""
    return DECODERS.get(cfg.name)(vocab_size, feat_dim, cfg)


def list_decoders() -> list[str]:
    return DECODERS.names()
