"""The bottom-up/top-down decoder (Anderson et al. 2018, "Up-Down"), with any attention.

Two LSTM layers per word. The attention LSTM reads the language LSTM's previous state, the mean
image feature and the word, ``h1_t = LSTM_1([h2_{t-1}; mean(f); E y_{t-1}], h1_{t-1})``; its new
state is the query of the registered mechanism (``decoder.attention``), which returns the context
``c_t``; the language LSTM reads ``[c_t; h1_t]`` and its state predicts the word,
``p(y_t) = softmax(W_p h2_t + b_p)``. Both LSTMs start from zeros, as in the paper. The image
side of the attention (its keys) is projected once per image, as in every RNN decoder here.

Same contract as :mod:`captionkit.models.decoders`: ``init_state``/``step`` for generation and
``forward`` (teacher forcing, via :func:`captionkit.models.decoders.teacher_forcing`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captionkit.config import DecoderConfig
from captionkit.models.attention import CellView, build_attention
from captionkit.models.decoders import (
    DECODERS,
    RNN_FIELDS,
    State,
    lstm_update,
    teacher_forcing,
)


class UpDownDecoder(nn.Module):
    """Anderson et al.'s top-down captioning model over grid features. State:
    ``(h1, c1, h2, c2, keys)``, the attention LSTM's, the language LSTM's, and the keys."""

    def __init__(self, vocab_size: int, feat_dim: int, cfg: DecoderConfig) -> None:
        super().__init__()
        h, e = cfg.hidden_dim, cfg.embed_dim
        self.vocab_size, self.hidden_dim = vocab_size, h
        self.embed = nn.Embedding(vocab_size, e)
        in1 = h + feat_dim + e  # [h2_{t-1}; mean feature; word]
        self.attention = build_attention(cfg, feat_dim, h, in1)
        self.att_lstm = nn.LSTMCell(in1, h)
        self.lang_lstm = nn.LSTMCell(self.attention.context_dim + h, h)  # [c_t; h1_t]
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(h, vocab_size)

    def init_state(self, feats: Tensor, keys: Tensor | None = None) -> State:
        """Zero states for both LSTMs (B, H) and the attention keys (projected here unless
        given)."""
        zero = feats.new_zeros(feats.size(0), self.hidden_dim)  # (B, H)
        if keys is None:
            keys = self.attention.project(feats)  # (B, N, A)
        return zero, zero, zero, zero, keys

    def _advance(self, feats: Tensor, state: State, emb: Tensor,
                 record: list | None = None) -> tuple[Tensor, State, Tensor]:
        """One word: the language LSTM's new state (B, H) (before dropout and the vocabulary
        layer), the new state, and alpha (B, N)."""
        h1, c1, h2, c2, keys = state
        x1 = torch.cat([h2, feats.mean(dim=1), emb], dim=1)  # (B, H + D + E)
        h1n, c1n = _lstm(self.att_lstm, x1, h1, c1)  # (B, H) each
        extra = {} if record is None else {"record": record}
        ctx, alpha = self.attention(feats, keys, h1n, CellView(x1, h1, c1n), **extra)
        h2n, c2n = _lstm(self.lang_lstm, torch.cat([ctx, h1n], dim=1), h2, c2)  # (B, H) each
        return h2n, (h1n, c1n, h2n, c2n, keys), alpha

    def step(self, feats: Tensor, state: State, token: Tensor) -> tuple[Tensor, State, Tensor]:
        """One generation step from the previous token (B,) -> logits (B, V), alpha (B, N)."""
        out, state, alpha = self._advance(feats, state, self.embed(token))
        return self.out(self.dropout(out)), state, alpha  # (B, V)

    def forward(self, feats: Tensor, tokens: Tensor, image_index: Tensor | None = None,
                extras: dict | None = None) -> tuple[Tensor, Tensor]:
        """Teacher forcing over tokens (C, T) -> logits (C, T, V), alphas (C, T, N); see
        :func:`~captionkit.models.decoders.teacher_forcing`."""
        return teacher_forcing(self, feats, tokens, image_index, extras)


def _lstm(cell: nn.LSTMCell, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """``cell(x, (h, c))`` through :func:`lstm_update` (the same bits; exports to ONNX with a
    symbolic batch, where ``nn.LSTMCell``'s own export does not)."""
    return lstm_update(F.linear(x, cell.weight_ih, cell.bias_ih),
                       F.linear(h, cell.weight_hh, cell.bias_hh), h, c)


@DECODERS.register("updown", fields=RNN_FIELDS,
                   description="Anderson et al. 2018 top-down: attention LSTM + language LSTM")
def updown(vocab_size: int, feat_dim: int, cfg: DecoderConfig) -> nn.Module:
    return UpDownDecoder(vocab_size, feat_dim, cfg)
