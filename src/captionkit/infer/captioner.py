"""The Python API: ``captionkit.load(checkpoint).caption("photo.jpg")``.

:class:`BaseCaptioner` is the one captioner contract: it owns captioning (``caption``,
``caption_batch``, ``caption_pixels``) and result packaging, and its subclasses supply only
``encode`` (pixels -> grid features). :class:`Captioner` runs a PyTorch checkpoint;
:class:`captionkit.infer.onnx_runtime.OnnxCaptioner` runs an ONNX export in onnxruntime. The
server and the CLI take either.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from captionkit.checkpoint import load_checkpoint
from captionkit.config import Config
from captionkit.data.features import fast_inference
from captionkit.data.images import Preprocess, load_image
from captionkit.data.vocab import Vocabulary
from captionkit.infer.decoding import DEFAULT_BEAM, beam_search, check_decoding
from captionkit.models.attention import sentinel_beta
from captionkit.models.decoders import has_sentinel
from captionkit.models.precision import DEFAULT_PRECISION, inference_decoder
from captionkit.models.precision import resolve as resolve_precision


@dataclass
class CaptionResult:
    """A caption with its per-word attention maps over the encoder's grid."""

    text: str
    words: list[str]
    score: float
    attention: np.ndarray  # (T, grid_h, grid_w), one map per word
    alternatives: list[tuple[str, float]] = field(default_factory=list)  # k-best (text, score)
    image: Image.Image | None = None
    # adaptive attention: per word, the weight on the visual sentinel (1 - beta: on the image)
    beta: list[float] | None = None
    precision: str = "fp32"  # the decoder arithmetic that produced it: fp32 or bf16


class BaseCaptioner(ABC):
    """Captions images with any encoder and any decoder behind the decoder contract
    (``init_state``/``step``, see :mod:`captionkit.models.decoders`).

    Attributes: ``decoder`` (driven by :func:`captionkit.infer.decoding.beam_search`),
    ``vocab``, ``cfg``, ``meta`` (the checkpoint's metadata), ``preprocess`` (PIL image ->
    (3, S, S)), ``grid`` (the encoder's (h, w)), ``device`` and ``dtype`` (what the decoder
    computes in). Subclasses implement :meth:`encode`.
    """

    def __init__(self, decoder, vocab: Vocabulary, cfg: Config, meta: dict,
                 preprocess: Preprocess, grid: tuple[int, int], device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.decoder, self.vocab, self.cfg, self.meta = decoder, vocab, cfg, meta
        self.preprocess = preprocess
        self.grid = tuple(grid)
        self.device = torch.device(device)
        self.dtype = dtype
        self.sentinel = has_sentinel(cfg.decoder)  # results carry per-word beta

    @property
    def precision(self) -> str:
        """The decoder arithmetic: ``"fp32"`` or ``"bf16"``."""
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, S, S) on ``self.device`` -> grid features (B, N, D), N = h * w."""

    def caption(self, image, beam_size: int = DEFAULT_BEAM,
                max_len: int | None = None) -> CaptionResult:
        """Caption one image (a path or a PIL image): text plus per-word attention maps
        (beam 3 and the default precision, as ``evaluate`` scores; ``beam_size=1`` is greedy)."""
        return self.caption_batch([image], beam_size, max_len)[0]

    def caption_batch(self, images: list, beam_size: int = DEFAULT_BEAM, max_len: int | None = None,
                      length_penalty: float = 0.0,
                      no_repeat_ngram: int = 0) -> list[CaptionResult]:
        """Caption several images (paths or PIL images) in one batch; each result carries the
        ``beam_size`` best captions with their scores as ``alternatives``."""
        pils = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
        x = torch.stack([self.preprocess(im.convert("RGB")) for im in pils])  # (B, 3, S, S)
        results = self.caption_pixels(x, beam_size, max_len, length_penalty, no_repeat_ngram)
        for res, im in zip(results, pils, strict=True):
            res.image = im
        return results

    @torch.no_grad()
    def caption_pixels(self, x: torch.Tensor, beam_size: int = DEFAULT_BEAM, max_len: int | None = None,
                       length_penalty: float = 0.0,
                       no_repeat_ngram: int = 0) -> list[CaptionResult]:
        """Caption already preprocessed images x (B, 3, S, S) (``self.preprocess`` output), as
        the server does after decoding each upload on its own thread."""
        check_decoding(beam_size, max_len)  # before the encoder's work
        feats = self.encode(x.to(self.device)).to(self.dtype)  # (B, N, D)
        hyps = beam_search(self.decoder, feats, start_id=self.vocab.start_id,
                           end_id=self.vocab.end_id, beam_size=beam_size,
                           max_len=self.vocab.max_len if max_len is None else max_len,
                           length_penalty=length_penalty,
                           no_repeat_ngram=no_repeat_ngram, banned=self.vocab.banned)
        return [self._result(beams) for beams in hyps]

    def _result(self, beams: list) -> CaptionResult:
        best = beams[0]
        words = [self.vocab.itos[t] for t in best.tokens]
        maps = best.alphas[: len(words)].float()  # (T, N)
        att = maps.numpy().reshape(len(words), *self.grid)
        alts = [(self.vocab.decode(h.tokens), h.score) for h in beams]
        beta = sentinel_beta(maps).tolist() if self.sentinel else None
        return CaptionResult(" ".join(words), words, best.score, att, alts, beta=beta,
                             precision=self.precision)


class Captioner(BaseCaptioner):
    """A trained PyTorch model ready to caption images: wraps model, config and vocabulary."""

    def __init__(self, model, cfg: Config, vocab: Vocabulary, meta: dict, device: str = "cpu",
                 fast: bool = True, precision: str = DEFAULT_PRECISION) -> None:
        """``fast``: trace the encoder on CPU. ``precision``: decoder arithmetic, ``auto`` by
        default as in ``evaluate``: bf16 where the hardware computes bf16 natively (about 5x
        faster beam search on such CPUs; the same captions as fp32 for most images, not all),
        else fp32. ``self.precision`` and every result say which."""
        device = torch.device(device)
        dtype = resolve_precision(precision, device)
        super().__init__(inference_decoder(model.decoder, dtype), vocab, cfg, meta,
                         model.encoder.preprocess, model.encoder.grid, device, dtype)
        self.model = model
        self.fast = fast and self.device.type == "cpu"
        self._traced: dict[int, object] = {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu",
                        precision: str = DEFAULT_PRECISION) -> Captioner:
        model, cfg, vocab, meta = load_checkpoint(path, device)
        return cls(model, cfg, vocab, meta, device, precision=precision)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) -> grid features (B, N, D). On CPU through a frozen,
        channels-last trace of the encoder (built on first use for each power-of-two batch
        size; see :func:`captionkit.data.features.fast_inference`)."""
        if not self.fast:
            return self.model.encode(x)
        size = 1 << (x.size(0) - 1).bit_length()
        if size not in self._traced:
            self._traced[size] = fast_inference(self.model.encoder, size, str(self.device))
        return self._traced[size](x)  # (B, N, D)


def load(path: str | Path, device: str = "cpu",
         precision: str = DEFAULT_PRECISION) -> Captioner:
    """Load a checkpoint folder into a :class:`Captioner`."""
    return Captioner.from_checkpoint(path, device, precision)
