"""Numeric precision: bf16 autocast for training and bf16 decoders for inference, used only
where the hardware computes bf16 natively (CUDA, or CPUs with AVX512-BF16/AMX)."""

from __future__ import annotations

import copy

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "auto")
# One default for evaluate, caption, serve and the API: on a given machine the captions
# evaluate scores are the captions users get. "auto" resolves to bf16 where the hardware
# computes it natively (about 5x faster beam search, what keeps one-image latency low), else
# fp32; every result records the precision it was decoded in. ONNX runs fp32.
DEFAULT_PRECISION = "auto"


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (else bf16 would be emulated, slowly)."""
    if device.type == "cuda":
        return True
    return (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))


def autocast(enabled: bool, device: torch.device, cache: bool = True):
    """bf16 autocast where the hardware does bf16 natively; a no-op context otherwise.
    ``cache=False`` re-casts weights at each use (required inside a captured CUDA graph)."""
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=enabled and bf16_native(device), cache_enabled=cache)


def resolve(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 where native, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and bf16_native(device)):
        return torch.bfloat16
    return torch.float32


def inference_decoder(decoder: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The decoder itself for fp32, or an eval-mode bf16 copy (half the weight bytes per
    decoding step, where small-batch decoding is bound by reading the weights)."""
    if dtype == torch.float32:
        return decoder
    return copy.deepcopy(decoder).to(dtype).eval()
