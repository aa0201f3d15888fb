"""ONNX export: onnxruntime captions match PyTorch's for every decoder; tampering is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from captionkit.checkpoint import save_checkpoint
from captionkit.config import Config
from captionkit.data.shapes import read_shapes
from captionkit.data.vocab import Vocabulary
from captionkit.errors import CaptionKitError
from captionkit.infer.captioner import BaseCaptioner, Captioner
from captionkit.infer.export import GRAPHS, MANIFEST, export_onnx, file_sha256
from captionkit.infer.onnx_runtime import OnnxCaptioner, load_onnx
from captionkit.models.captioner import build_model

PHOTOS = Path(__file__).resolve().parents[2].parent / "shared" / "photos"
TINY = ["decoder.embed_dim=16", "decoder.hidden_dim=32", "decoder.attention_dim=16",
        "decoder.num_heads=2", "decoder.num_layers=2"]
PHOTO_WORDS = ["a dog runs on the grass", "a man in a red shirt climbs a rock",
               "two children play in the water near a white boat",
               "a black and brown dog jumps over a fence", "people walk down a busy street"]


def _checkpoint(folder: Path, overrides: list[str], vocab: Vocabulary,
                end_bias: float = 0.0) -> Path:
    """A seeded, untrained model saved as a checkpoint; ``end_bias`` lowers <end>'s logit so
    captions run for several words."""
    cfg = Config().override([*TINY, *overrides])
    torch.manual_seed(0)
    model = build_model(cfg, len(vocab))
    with torch.no_grad():
        model.decoder.out.bias[vocab.end_id] -= end_bias
    return save_checkpoint(folder, model, cfg, vocab)


def _assert_same(expected: list, got: list) -> None:
    """Same captions and alternatives; scores within 1e-4; attention maps close."""
    assert len(expected) == len(got)
    for want, have in zip(expected, got, strict=True):
        assert have.text == want.text and have.words == want.words
        assert [t for t, _ in have.alternatives] == [t for t, _ in want.alternatives]
        for (_, s_want), (_, s_have) in zip(want.alternatives, have.alternatives, strict=True):
            assert s_have == pytest.approx(s_want, abs=1e-4)
        assert have.score == pytest.approx(want.score, abs=1e-4)
        assert have.attention.shape == want.attention.shape
        np.testing.assert_allclose(have.attention, want.attention, atol=1e-4)


@pytest.fixture(scope="module")
def shapes_vocab(shapes_root) -> Vocabulary:
    return Vocabulary.build((c for r in read_shapes(shapes_root) for c in r.captions), max_len=8)


@pytest.fixture(scope="module", params=["lstm", "gru", "transformer", "updown", "lstm+general",
                                        "gru+aoa", "gru+scaled_dot", "lstm+adaptive",
                                        "updown+adaptive", "lstm+hard", "updown+hard"])
def exported(request, tmp_path_factory, shapes_vocab) -> tuple[Path, Path]:
    """(checkpoint, export folder) of a tiny shapes_cnn model with each decoder (and the RNN
    decoders with the other attention mechanisms)."""
    root = tmp_path_factory.mktemp(f"export_{request.param.replace('+', '_')}")
    name, _, attention = request.param.partition("+")
    ckpt = _checkpoint(root / "ckpt", [f"decoder.name={name}",
                                       f"decoder.attention={attention or 'additive'}"],
                       shapes_vocab, end_bias=2.0)
    return ckpt, export_onnx(ckpt, root / "onnx")


def test_onnxruntime_captions_match_torch(exported, shapes_root):
    ckpt, folder = exported
    images = [r.image for r in read_shapes(shapes_root)[:4]]
    torch_cap = Captioner.from_checkpoint(ckpt, precision="fp32")
    onnx_cap = load_onnx(folder)
    assert isinstance(onnx_cap, OnnxCaptioner) and onnx_cap.model is None
    assert isinstance(onnx_cap, BaseCaptioner) and isinstance(torch_cap, BaseCaptioner)
    assert (onnx_cap.device, onnx_cap.dtype) == (torch_cap.device, torch_cap.dtype)
    assert onnx_cap.grid == torch_cap.grid and onnx_cap.vocab.itos == torch_cap.vocab.itos
    assert onnx_cap.meta["config"] == torch_cap.meta["config"]
    assert onnx_cap.preprocess == torch_cap.preprocess
    for beam in (1, 3):
        want = torch_cap.caption_batch(images, beam_size=beam)
        assert any(r.words for r in want)  # something real to compare
        _assert_same(want, onnx_cap.caption_batch(images, beam_size=beam))
    one = onnx_cap.caption(images[0], max_len=5)  # batch of one
    _assert_same([torch_cap.caption(images[0], max_len=5)], [one])
    assert one.image is not None and one.attention.shape == (len(one.words), *onnx_cap.grid)


def test_manifest_and_dynamic_axes(exported):
    _, folder = exported
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["opset"] == 17 and manifest["grid"] == [6, 6]
    assert {"config", "vocab", "metrics"} <= set(manifest["meta"])
    for key, name in GRAPHS.items():
        assert manifest["files"][key] == {"path": name, "sha256": file_sha256(folder / name)}
    state = manifest["state"]
    assert state["count"] == len(state["names"]) == len(state["dtypes"])
    step = onnx.load(str(folder / GRAPHS["decoder_step"]))
    dims = {v.name: [d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in step.graph.input}
    assert dims["token"] == ["batch"]
    for name, axes in zip(state["names"], state["growing_axes"], strict=True):
        assert dims[name][0] == "batch"
        assert all(dims[name][ax] for ax in axes)  # the cache length is symbolic
    grows = any(state["growing_axes"])
    assert grows == (manifest["decoder"] == "transformer")


def test_real_photos_efficientnet_lite0(tmp_path, shapes_root):
    """Pretrained Lite0 (offline weights) + a seeded decoder: the same captions either way, on
    real photos when ../shared/photos exists, else on generated images."""
    photos = sorted(PHOTOS.glob("*.jpg"))[:5] if PHOTOS.is_dir() else []
    images = photos or [r.image for r in read_shapes(shapes_root)[:5]]
    vocab = Vocabulary.build(PHOTO_WORDS, max_len=10)
    ckpt = _checkpoint(tmp_path / "ckpt", ["encoder.name=efficientnet_lite0",
                                          "encoder.pretrained=true", "encoder.trainable=false"],
                       vocab, end_bias=1.5)
    torch_cap = Captioner.from_checkpoint(ckpt, precision="fp32")
    torch_cap.fast = False  # eager encoder: tracing Lite0 costs ~10 s of CPU (see test_api)
    onnx_cap = load_onnx(export_onnx(ckpt, tmp_path / "onnx"))
    assert onnx_cap.grid == (7, 7) and onnx_cap.preprocess.size == 224
    for beam in (1, 3):
        want = torch_cap.caption_batch(images, beam_size=beam)
        assert any(r.words for r in want)
        _assert_same(want, onnx_cap.caption_batch(images, beam_size=beam))


@pytest.mark.parametrize("exported", ["gru"], indirect=True)
def test_tampered_or_missing_files_are_refused(exported, tmp_path):
    _, folder = exported
    bad = shutil.copytree(folder, tmp_path / "tampered")
    path = bad / GRAPHS["decoder_step"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CaptionKitError, match=r"decoder_step\.onnx: SHA-256 mismatch"):
        load_onnx(bad)
    gone = shutil.copytree(folder, tmp_path / "missing")
    (gone / GRAPHS["encoder"]).unlink()
    with pytest.raises(CaptionKitError, match=r"encoder\.onnx: ONNX file missing"):
        load_onnx(gone)
    (gone / MANIFEST).unlink()
    with pytest.raises(CaptionKitError, match=MANIFEST):
        load_onnx(gone)
    with pytest.raises(CaptionKitError, match="export_onnx"):
        OnnxCaptioner.from_checkpoint(folder)
