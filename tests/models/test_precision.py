import pytest
import torch

from captionkit.data.shapes import read_shapes
from captionkit.infer.captioner import Captioner
from captionkit.models.precision import bf16_native, inference_decoder, resolve


def test_resolve_and_decoder_copies():
    cpu = torch.device("cpu")
    assert resolve("fp32", cpu) == torch.float32 and resolve("bf16", cpu) == torch.bfloat16
    assert resolve("auto", cpu) == (torch.bfloat16 if bf16_native(cpu) else torch.float32)
    with pytest.raises(ValueError):
        resolve("fp8", cpu)
    dec = torch.nn.Linear(3, 2)
    assert inference_decoder(dec, torch.float32) is dec
    half = inference_decoder(dec, torch.bfloat16)
    assert half is not dec and half.weight.dtype == torch.bfloat16 and dec.weight.dtype == \
        torch.float32


def test_bf16_decoding_agrees_with_fp32(trained_checkpoint, shapes_root):
    paths = [r.image for r in read_shapes(shapes_root)[:8]]
    fp32 = Captioner.from_checkpoint(trained_checkpoint, precision="fp32")
    bf16 = Captioner.from_checkpoint(trained_checkpoint, precision="bf16")
    a = fp32.caption_batch(paths, beam_size=2)
    b = bf16.caption_batch(paths, beam_size=2)
    assert sum(x.text == y.text for x, y in zip(a, b, strict=True)) >= 6
    assert all(r.attention.dtype.name == "float32" for r in b)
