"""The Python API: ``captionkit.load(checkpoint).caption("photo.jpg")``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from captionkit.checkpoint import load_checkpoint
from captionkit.data.images import load_image
from captionkit.decoding import beam_search


@dataclass
class CaptionResult:
    """A caption with its per-word attention maps over the encoder's grid."""

    text: str
    words: list[str]
    score: float
    attention: np.ndarray  # (T, grid_h, grid_w), one map per word
    alternatives: list[tuple[str, float]] = field(default_factory=list)  # k-best (text, score)
    image: Image.Image | None = None


class Captioner:
    """A trained model ready to caption images: wraps model, config and vocabulary."""

    def __init__(self, model, cfg, vocab, meta: dict, device: str = "cpu") -> None:
        self.model, self.cfg, self.vocab, self.meta = model, cfg, vocab, meta
        self.device = torch.device(device)
        self.preprocess = model.encoder.preprocess
        self.grid = tuple(model.encoder.grid)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> Captioner:
        model, cfg, vocab, meta = load_checkpoint(path, device)
        return cls(model, cfg, vocab, meta, device)

    @torch.no_grad()
    def caption_batch(self, images: list, beam_size: int = 1, max_len: int | None = None,
                      length_penalty: float = 0.0) -> list[CaptionResult]:
        """Caption several images (paths or PIL images) in one batch."""
        pils = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
        x = torch.stack([self.preprocess(im.convert("RGB")) for im in pils]).to(self.device)
        feats = self.model.encode(x)  # (B, N, D)
        hyps = beam_search(self.model.decoder, feats, start_id=self.vocab.start_id,
                           end_id=self.vocab.end_id, beam_size=beam_size,
                           max_len=max_len or self.vocab.max_len, length_penalty=length_penalty)
        results = []
        for im, beams in zip(pils, hyps, strict=True):
            best = beams[0]
            words = [self.vocab.itos[t] for t in best.tokens]
            att = best.alphas[: len(words)].numpy().reshape(len(words), *self.grid)
            alts = [(self.vocab.decode(h.tokens), h.score) for h in beams]
            results.append(CaptionResult(" ".join(words), words, best.score, att, alts, im))
        return results

    def caption(self, image, beam_size: int = 1, max_len: int | None = None) -> CaptionResult:
        """Caption one image (a path or a PIL image): text plus per-word attention maps."""
        return self.caption_batch([image], beam_size, max_len)[0]


def load(path: str | Path, device: str = "cpu") -> Captioner:
    """Load a checkpoint folder into a :class:`Captioner`."""
    return Captioner.from_checkpoint(path, device)
