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

    def forward(self, images: Tensor, tokens: Tensor,
                image_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Teacher forcing. ``images`` are pixels (B, 3, H, W) or cached features (B, N, D).
        ``image_index`` (C,) maps each of C captions to its image, so the encoder and the
        attention projection run once per image however many captions it has."""
        feats = images if images.dim() == 3 else self.encode(images)  # (B, N, D)
        return self.decoder(feats, tokens, image_index)  # (C, T, V), (C, T, N)

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
