"""The captioning model: an encoder (images -> grid features) and a decoder."""

from __future__ import annotations

from torch import Tensor, nn

from captionkit.config import Config
from captionkit.models.decoders import build_decoder
from captionkit.models.encoders import Encoder, build_encoder


class CaptionModel(nn.Module):
    """``encoder`` turns images into (B, N, D) features; ``decoder`` writes words over them."""

    def __init__(self, encoder: Encoder, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, images: Tensor) -> Tensor:
        return self.encoder(images)  # (B, 3, H, W) -> (B, N, D)

    def grid_features(self, pixels: Tensor | None = None,
                      features: Tensor | None = None) -> Tensor:
        """Grid features (B, N, D): ``features`` as given (read from a feature cache), else
        the encoder over ``pixels`` (B, 3, H, W). Exactly one of them is given (a batch's
        ``pixels`` and ``features``)."""
        if (pixels is None) == (features is None):
            raise ValueError("give exactly one of pixels and features")
        return features if features is not None else self.encode(pixels)  # (B, N, D)

    def forward(self, tokens: Tensor, image_index: Tensor | None = None, *,
                pixels: Tensor | None = None,
                features: Tensor | None = None,
                extras: dict | None = None) -> tuple[Tensor, Tensor]:
        """Teacher forcing over tokens (C, T) of images given as ``pixels`` or cached
        ``features`` (see :meth:`grid_features`). ``image_index`` (C,) maps each of C captions
        to its image, so the encoder and the attention projection run once per image however
        many captions it has. ``extras`` (a dict) receives a stochastic attention's per-step
        choices (see :func:`captionkit.models.decoders.teacher_forcing`)."""
        feats = self.grid_features(pixels, features)  # (B, N, D)
        if extras is None:
            return self.decoder(feats, tokens, image_index)  # (C, T, V), (C, T, N)
        return self.decoder(feats, tokens, image_index, extras=extras)

    def train(self, mode: bool = True) -> CaptionModel:
        """Like nn.Module.train, but a frozen encoder stays in eval mode (BatchNorm statistics
        are never updated for a frozen encoder)."""
        super().train(mode)
        if not any(p.requires_grad for p in self.encoder.parameters()):
            self.encoder.eval()
        return self


def build_model(cfg: Config, vocab_size: int, pretrained: bool | None = None) -> CaptionModel:
    """Build encoder + decoder from a config. ``pretrained=False`` skips loading encoder weights
    (used when a checkpoint supplies every weight)."""
    enc_cfg = cfg.encoder
    if pretrained is False:
        from dataclasses import replace

        enc_cfg = replace(enc_cfg, pretrained=False, weights=None)
    encoder = build_encoder(enc_cfg)
    decoder = build_decoder(cfg.decoder, vocab_size, encoder.out_dim)
    return CaptionModel(encoder, decoder)
