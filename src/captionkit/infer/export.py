"""ONNX export: a checkpoint -> three ONNX graphs and a JSON manifest, so that captions can be
generated with onnxruntime alone (:mod:`captionkit.infer.onnx_runtime`), no torch weights needed.

Layout of an export folder::

    encoder.onnx          pixels (B, 3, S, S) float32 -> feats (B, N, D)
    decoder_init.onnx     feats (B, N, D) -> state_0 .. state_{k-1}       (decoder.init_state)
    decoder_step.onnx     feats, token (B,) int64, state_0 .. state_{k-1}
                          -> logits (B, V), new_state_0 .. new_state_{k-1}, alpha (B, N)
    captionkit_onnx.json  checkpoint meta (config, vocab, metrics), preprocessing, grid, state
                          names, opset and the SHA-256 of each graph; written last

The state is whatever the decoder's ``init_state`` returns (lstm/gru: h, c and the attention
keys; transformer: the position, then per block the memory keys/values and the self-attention
cache). Every state axis that grows from one step to the next (the transformer's cache length)
is exported as a dynamic axis, like the batch axis of every input and output.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from captionkit.checkpoint import load_checkpoint
from captionkit.data.features import file_sha256
from captionkit.data.vocab import Vocabulary

MANIFEST = "captionkit_onnx.json"
GRAPHS = {"encoder": "encoder.onnx", "decoder_init": "decoder_init.onnx",
          "decoder_step": "decoder_step.onnx"}
FORMAT = "captionkit-onnx"
FORMAT_VERSION = 1
EXAMPLE_BATCH = 2  # > 1, so that tracing cannot mistake the batch axis for a broadcast one


class _InitGraph(nn.Module):
    """``decoder.init_state`` as a module: feats (B, N, D) -> the state tensors."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, feats: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.decoder.init_state(feats))


class _StepGraph(nn.Module):
    """``decoder.step`` with a flat signature: (feats, token, *state) -> (logits, *state, alpha)."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, feats: Tensor, token: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        logits, new, alpha = self.decoder.step(feats, tuple(state), token)  # (B, V), (B, N)
        return (logits, *new, alpha)


def _growing_axes(decoder: nn.Module, feats: Tensor, token: Tensor) -> tuple[list[list[int]],
                                                                              tuple[Tensor, ...]]:
    """Per state tensor, the non-batch axes whose size changes from step to step; and the state
    after two steps (the example traced, so no growing axis is traced at size 0 or 1)."""
    state = decoder.init_state(feats)
    shapes = [tuple(s.shape) for s in state]
    for _ in range(2):
        _, state, _ = decoder.step(feats, state, token)
    grows = [[ax for ax in range(1, len(a)) if a[ax] != b[ax]]
             for a, b in zip(shapes, (tuple(s.shape) for s in state), strict=True)]
    return grows, tuple(state)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            axes: dict[str, dict[int, str]], opset: int) -> None:
    """``torch.onnx.export`` through the TorchScript tracer (the dynamo exporter needs
    onnxscript), then a structural check of the written graph."""
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the encoder's shape check
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    onnx.checker.check_model(str(path))


def _export_decoder(decoder: nn.Module, out_dir: Path, num_locations: int, feat_dim: int,
                    opset: int) -> dict:
    """Write decoder_init.onnx and decoder_step.onnx; return the manifest's ``state`` entry."""
    feats = torch.randn(EXAMPLE_BATCH, num_locations, feat_dim)  # (B, N, D)
    token = torch.full((EXAMPLE_BATCH,), Vocabulary.start_id, dtype=torch.long)  # (B,)
    grows, state = _growing_axes(decoder, feats, token)
    k = len(state)
    names = [f"state_{i}" for i in range(k)]
    new_names = [f"new_state_{i}" for i in range(k)]
    batch = {0: "batch"}
    init_axes = {"feats": batch, **{n: batch for n in names}}
    _export(_InitGraph(decoder), (feats,), out_dir / GRAPHS["decoder_init"], ["feats"], names,
            init_axes, opset)
    step_axes: dict[str, dict[int, str]] = {"feats": batch, "token": batch, "logits": batch,
                                            "alpha": batch}
    for i, axes in enumerate(grows):
        step_axes[names[i]] = {**batch, **{ax: f"past_{i}_{ax}" for ax in axes}}
        step_axes[new_names[i]] = {**batch, **{ax: f"next_{i}_{ax}" for ax in axes}}
    _export(_StepGraph(decoder), (feats, token, *state), out_dir / GRAPHS["decoder_step"],
            ["feats", "token", *names], ["logits", *new_names, "alpha"], step_axes, opset)
    return {"count": k, "names": names, "new_names": new_names,
            "dtypes": [str(s.dtype).removeprefix("torch.") for s in state],
            "growing_axes": grows}


@torch.no_grad()
def export_onnx(checkpoint: str | Path, out_dir: str | Path, opset: int = 17) -> Path:
    """Export a checkpoint folder to ONNX (fp32, eval mode) in ``out_dir``; return ``out_dir``.

    Writes ``encoder.onnx``, ``decoder_init.onnx``, ``decoder_step.onnx`` (dynamic batch axis;
    the transformer's cache length is dynamic too) and, last, ``captionkit_onnx.json`` with
    everything :func:`captionkit.infer.onnx_runtime.load_onnx` needs. Nothing is pickled.
    """
    model, cfg, vocab, meta = load_checkpoint(checkpoint, "cpu")
    model = model.float().eval()
    enc = model.encoder
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a folder with a manifest is a complete export
    size = enc.preprocess.size
    pixels = torch.randn(EXAMPLE_BATCH, 3, size, size)  # (B, 3, S, S)
    _export(enc, (pixels,), out / GRAPHS["encoder"], ["pixels"], ["feats"],
            {"pixels": {0: "batch"}, "feats": {0: "batch"}}, opset)
    state = _export_decoder(model.decoder, out, enc.num_locations, enc.out_dim, opset)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "opset": opset,
        "torch_version": torch.__version__,
        "meta": {**meta, "config": cfg.to_dict(), "vocab": vocab.to_dict()},
        "encoder": enc.name, "decoder": cfg.decoder.name,
        "preprocess": enc.preprocess.to_dict(), "grid": list(enc.grid), "feat_dim": enc.out_dim,
        "vocab_size": len(vocab), "state": state,
        "files": {key: {"path": name, "sha256": file_sha256(out / name)}
                  for key, name in GRAPHS.items()},
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / MANIFEST)
    return out
