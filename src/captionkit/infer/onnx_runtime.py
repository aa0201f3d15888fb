"""Captioning with onnxruntime alone, from a folder written by
:func:`captionkit.infer.export.export_onnx`.

:class:`OnnxDecoder` gives the two decoder graphs the decoder contract (``init_state``/``step``
on torch CPU tensors), so :func:`captionkit.infer.decoding.beam_search` drives them unchanged;
:class:`OnnxCaptioner` is a :class:`captionkit.infer.captioner.BaseCaptioner` whose encoder and
decoder run in onnxruntime: same ``caption``/``caption_batch``/``caption_pixels`` as the PyTorch
:class:`captionkit.infer.captioner.Captioner`, same results.

Every graph's SHA-256 is checked against the manifest before onnxruntime sees its bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from captionkit.config import Config
from captionkit.data.images import Preprocess
from captionkit.data.vocab import Vocabulary
from captionkit.errors import CheckpointError
from captionkit.infer.captioner import BaseCaptioner
from captionkit.infer.export import FORMAT, FORMAT_VERSION, GRAPHS, MANIFEST

State = tuple[Tensor, ...]
PROVIDERS = ["CPUExecutionProvider"]


def _np(t: Tensor) -> np.ndarray:
    """A torch CPU tensor as a C-contiguous numpy array (no copy when it already is one)."""
    return np.ascontiguousarray(t.detach().cpu().numpy())


def _torch(*arrays: np.ndarray) -> list[Tensor]:
    return [torch.from_numpy(a) for a in arrays]


class OnnxDecoder:
    """``decoder_init``/``decoder_step`` sessions behind the decoder contract of
    :mod:`captionkit.models.decoders`: ``init_state(feats)`` and ``step(feats, state, token)``
    take and return torch CPU tensors."""

    def __init__(self, init_session, step_session, state_names: list[str],
                 new_state_names: list[str]) -> None:
        self.init_session, self.step_session = init_session, step_session
        self.state_names, self.new_state_names = list(state_names), list(new_state_names)
        self._outputs = ["logits", *self.new_state_names, "alpha"]
        self._wants_feats = "feats" in {i.name for i in step_session.get_inputs()}

    def init_state(self, feats: Tensor) -> State:
        """feats (B, N, D) -> the decoder's state, a tuple of tensors with the batch first."""
        outs = self.init_session.run(self.state_names, {"feats": _np(feats.float())})
        return tuple(_torch(*outs))

    def step(self, feats: Tensor, state: State, token: Tensor) -> tuple[Tensor, State, Tensor]:
        """One generation step from the previous token (B,) -> logits (B, V), state,
        alpha (B, N)."""
        feed = {name: _np(s) for name, s in zip(self.state_names, state, strict=True)}
        feed["token"] = _np(token.long())  # (B,)
        if self._wants_feats:  # the transformer reads the image only through its state
            feed["feats"] = _np(feats.float())  # (B, N, D)
        logits, *new, alpha = _torch(*self.step_session.run(self._outputs, feed))
        return logits, tuple(new), alpha  # (B, V), state, (B, N)


def read_manifest(folder: str | Path) -> dict:
    """The export's manifest, checked for format and version."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{path}: ONNX export manifest not found")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e.msg})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} manifest "
                              f"(format {manifest.get('format')!r}, "
                              f"version {manifest.get('format_version')!r})")
    missing = [k for k in ("meta", "preprocess", "grid", "state", "files") if k not in manifest]
    missing = missing or [f"files.{k}" for k in GRAPHS if k not in manifest["files"]]
    if missing:
        raise CheckpointError(f"{path}: incomplete manifest (missing {', '.join(missing)})")
    return manifest


def _verified_bytes(folder: Path, entry: dict) -> bytes:
    """A graph's bytes, after checking them against the manifest's SHA-256."""
    path = folder / entry["path"]
    if not path.is_file():
        raise CheckpointError(f"{path}: ONNX file missing from the export")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise CheckpointError(f"{path}: SHA-256 mismatch (file {digest[:12]}..., manifest "
                              f"{entry['sha256'][:12]}...); the file is corrupt or was changed")
    return data


def _session(folder: Path, entry: dict, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    data = _verified_bytes(folder, entry)
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=PROVIDERS)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise CheckpointError(f"{folder / entry['path']}: onnxruntime cannot load it "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                              ) from None


class OnnxCaptioner(BaseCaptioner):
    """A :class:`captionkit.infer.captioner.BaseCaptioner` whose encoder and decoder run in
    onnxruntime (CPU, fp32).

    Same public surface as the PyTorch :class:`captionkit.infer.captioner.Captioner`:
    ``caption``, ``caption_batch``, ``caption_pixels``, ``encode``, ``vocab``, ``meta``,
    ``cfg``, ``grid``, ``preprocess``; ``model`` is None (there are no torch weights).
    """

    def __init__(self, folder: str | Path, threads: int = 2) -> None:
        """Load an export folder (checksums verified); ``threads``: onnxruntime intra-op threads."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        sessions = {key: _session(folder, manifest["files"][key], threads) for key in GRAPHS}
        meta, pre, state = manifest["meta"], manifest["preprocess"], manifest["state"]
        decoder = OnnxDecoder(sessions["decoder_init"], sessions["decoder_step"],
                              state["names"], state["new_names"])
        super().__init__(decoder, Vocabulary.from_dict(meta["vocab"]),
                         Config.from_dict(meta["config"]), meta,
                         Preprocess(int(pre["size"]), tuple(pre["mean"]), tuple(pre["std"])),
                         manifest["grid"], "cpu", torch.float32)
        self.folder, self.manifest = folder, manifest
        self.model = None
        self.encoder_session = sessions["encoder"]

    def encode(self, x: Tensor) -> Tensor:
        """Pixels (B, 3, S, S) -> grid features (B, N, D), in onnxruntime."""
        (feats,) = self.encoder_session.run(["feats"], {"pixels": _np(x.float())})
        return torch.from_numpy(feats)  # (B, N, D)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu",
                        precision: str = "fp32") -> OnnxCaptioner:
        """Not available (kept so that the mistake gets a pointer, not an AttributeError):
        export the checkpoint first (:func:`captionkit.infer.export.export_onnx`), then
        :func:`load_onnx` the folder."""
        raise CheckpointError(f"{path}: an OnnxCaptioner loads an ONNX export folder; run "
                              "captionkit.infer.export.export_onnx on the checkpoint, "
                              "then load_onnx")


def load_onnx(folder: str | Path, threads: int | None = None) -> OnnxCaptioner:
    """Load an ONNX export folder into an :class:`OnnxCaptioner` (onnxruntime, CPU, fp32;
    ``threads`` default: :func:`captionkit.threads.default_threads`)."""
    from captionkit.threads import default_threads

    return OnnxCaptioner(folder, default_threads() if threads is None else threads)
