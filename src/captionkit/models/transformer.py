"""A Transformer decoder behind the same contract as the RNN decoders.

Pre-norm blocks of causal self-attention, cross-attention over the projected grid features and
a feed-forward layer. ``forward`` runs teacher forcing over whole captions; ``step`` generates
one token with cached self-attention keys/values and precomputed cross-attention keys/values,
so beam search, SCST, the CLI and attention maps work unchanged. The attention map of a word is
the last block's cross-attention, averaged over heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captionkit.config import DecoderConfig
from captionkit.errors import ConfigError
from captionkit.models.decoders import DECODERS

MAX_POSITIONS = 128
State = tuple[Tensor, ...]


class Block(nn.Module):
    """One pre-norm decoder block; attention weights of the cross-attention are returned."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.self_out = nn.Linear(d, d)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)  # applied to the image memory once per image
        self.cross_out = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def split(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        return x.view(B, T, self.heads, D // self.heads).transpose(1, 2)  # (B, H, T, Dh)

    def merge(self, x: Tensor) -> Tensor:
        B, H, T, Dh = x.shape
        return x.transpose(1, 2).reshape(B, T, H * Dh)  # (B, T, D)

    def memory(self, mem: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(mem).chunk(2, dim=-1)  # (B, N, D) each
        return self.split(k), self.split(v)  # (B, H, N, Dh)

    def forward(self, x: Tensor, mk: Tensor, mv: Tensor, past: tuple[Tensor, Tensor] | None,
                causal: bool) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """x (B, T, D) -> (x, cross-attention (B, T, N) head-averaged, self keys/values)."""
        q, k, v = (self.split(t) for t in self.qkv(self.ln1(x)).chunk(3, dim=-1))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B,H,t,Dh)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, T, Dh)
        x = x + self.drop(self.self_out(self.merge(a)))
        q = self.split(self.q(self.ln2(x)))  # (B, H, T, Dh)
        w = torch.softmax(q @ mk.transpose(-1, -2) / math.sqrt(q.size(-1)), dim=-1)  # (B,H,T,N)
        x = x + self.drop(self.cross_out(self.merge(self.drop(w) @ mv)))
        x = x + self.drop(self.ff(self.ln3(x)))
        return x, w.mean(dim=1), (k, v)


class TransformerDecoder(nn.Module):
    """Causal Transformer captioner head over encoder grid features (B, N, D)."""

    def __init__(self, vocab_size: int, feat_dim: int, cfg: DecoderConfig) -> None:
        super().__init__()
        d = cfg.hidden_dim
        if d % cfg.num_heads:
            raise ValueError(f"decoder.hidden_dim {d} must be divisible by num_heads "
                             f"{cfg.num_heads}")
        self.vocab_size, self.hidden_dim = vocab_size, d
        self.mem_proj = nn.Sequential(nn.Linear(feat_dim, d), nn.LayerNorm(d))
        self.embed = nn.Embedding(vocab_size, d)
        self.pos = nn.Embedding(MAX_POSITIONS, d)
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.dropout)
                                    for _ in range(cfg.num_layers))
        self.ln = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab_size)
        self.drop = nn.Dropout(cfg.dropout)

    def _memory(self, feats: Tensor) -> list[tuple[Tensor, Tensor]]:
        mem = self.mem_proj(feats)  # (B, N, d)
        return [blk.memory(mem) for blk in self.blocks]

    def forward(self, feats: Tensor, tokens: Tensor,
                image_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Teacher forcing: tokens (C, T) -> logits (C, T, V), alphas (C, T, N). The memory
        projections run once per image; ``image_index`` (C,) maps captions to images."""
        mems = self._memory(feats)
        if image_index is not None:
            mems = [(k[image_index], v[image_index]) for k, v in mems]  # (C, H, N, Dh)
        T = tokens.size(1)
        pos = torch.arange(T, device=tokens.device)
        x = self.drop(self.embed(tokens) + self.pos(pos))  # (C, T, d)
        for blk, (mk, mv) in zip(self.blocks, mems, strict=True):
            x, alpha, _ = blk(x, mk, mv, None, causal=True)
        return self.out(self.ln(x)), alpha  # (C, T, V), (C, T, N)

    def init_state(self, feats: Tensor, keys: Tensor | None = None) -> State:
        """(position, then per block: memory keys, memory values, self keys, self values);
        every tensor has the batch first, so beam search can reorder it."""
        B = feats.size(0)
        state: list[Tensor] = [torch.zeros(B, dtype=torch.long, device=feats.device)]
        for mk, mv in self._memory(feats):
            empty = mk.new_zeros(B, mk.size(1), 0, mk.size(3))  # (B, H, 0, Dh)
            state += [mk, mv, empty, empty]
        return tuple(state)

    def step(self, feats: Tensor, state: State, token: Tensor) -> tuple[Tensor, State, Tensor]:
        """One token (B,) -> logits (B, V), new state, alpha (B, N)."""
        pos = state[0]
        x = self.drop(self.embed(token) + self.pos(pos)).unsqueeze(1)  # (B, 1, d)
        new: list[Tensor] = [pos + 1]
        for i, blk in enumerate(self.blocks):
            mk, mv, sk, sv = state[1 + 4 * i : 5 + 4 * i]
            x, alpha, (sk, sv) = blk(x, mk, mv, (sk, sv), causal=False)
            new += [mk, mv, sk, sv]
        logits = self.out(self.ln(x[:, 0]))  # (B, V)
        return logits, tuple(new), alpha[:, 0]


def _check(cfg: DecoderConfig) -> None:
    if cfg.hidden_dim % cfg.num_heads:
        raise ConfigError(f"decoder.hidden_dim ({cfg.hidden_dim}) must be divisible by "
                          f"decoder.num_heads ({cfg.num_heads}) for the transformer decoder")


@DECODERS.register("transformer", fields=("hidden_dim", "num_layers", "num_heads", "dropout"),
                   check=_check, description="pre-norm causal Transformer over the grid")
def transformer(vocab_size: int, feat_dim: int, cfg: DecoderConfig) -> nn.Module:
    return TransformerDecoder(vocab_size, feat_dim, cfg)
