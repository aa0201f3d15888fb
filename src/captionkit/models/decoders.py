"""RNN decoders with attention (``lstm``, ``gru``) behind one contract.

Every decoder implements:

- ``forward(feats, tokens) -> (logits, alphas)``: teacher forcing. ``tokens`` (B, T) starts with
  <start>; ``logits[:, t]`` (B, T, V) predicts ``tokens[:, t + 1]``; ``alphas`` is (B, T, N).
- ``init_state(feats) -> state``: a tuple of tensors whose first dimension is the batch.
- ``step(feats, state, token) -> (logits, state, alpha)``: one generation step, (B, V) and (B, N).

Decoding (captionkit.decoding) needs nothing else, whatever the decoder.
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

    def init_state(self, feats: Tensor) -> State:
        """(h, c, keys): hidden states from the mean feature, and the attention keys."""
        mean = feats.mean(dim=1)  # (B, D)
        h = torch.tanh(self.init_h(mean))  # (B, H)
        c = torch.tanh(self.init_c(mean)) if self.init_c is not None else torch.zeros_like(h)
        return h, c, self.attention.project(feats)  # keys (B, N, A)

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

    def forward(self, feats: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing over tokens (B, T) -> logits (B, T, V), alphas (B, T, N)."""
        state = self.init_state(feats)
        emb = self.embed(tokens)  # (B, T, E)
        outs, alphas = [], []
        for t in range(tokens.size(1)):
            out, state, alpha = self._advance(feats, state, emb[:, t])
            outs.append(out)
            alphas.append(alpha)
        hidden = torch.stack(outs, dim=1)  # (B, T, E)
        return self.out(self.dropout(hidden)), torch.stack(alphas, dim=1)  # (B,T,V), (B,T,N)


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
