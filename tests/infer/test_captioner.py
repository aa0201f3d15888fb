import inspect

import pytest
import torch
from PIL import Image

import captionkit
from captionkit.checkpoint import load_checkpoint
from captionkit.config import Config
from captionkit.data import by_split
from captionkit.data.shapes import read_shapes
from captionkit.infer.captioner import BaseCaptioner, Captioner, CaptionResult
from captionkit.infer.decoding import greedy
from captionkit.infer.onnx_runtime import OnnxCaptioner
from captionkit.models.decoders import list_decoders
from captionkit.models.encoders import list_encoders

# What the seeded model below says about the test split's image 3 (reference: "a small purple
# triangle , a large red circle and a small purple square"). Recorded once from a run on CPU,
# one thread, fp32 decoding; it changes when training, the model or the shapes generator change
# (then record it again from a run, after checking that the new caption is still sensible).
KNOWN_CAPTION = "a small red circle and a small red triangle"
KNOWN_IMAGE = 3


@pytest.fixture(scope="module")
def seeded_checkpoint(tmp_path_factory, shapes_root):
    """The tiny shapes model, trained here (about 5 s on one CPU thread) with a fixed seed and a
    learning rate high enough for real captions: its own config, so that the recorded caption
    does not move when the shared fixtures do."""
    from captionkit.train.fit import fit

    cfg = Config().override([
        f"data.root={shapes_root}", "data.num_train=32", "data.num_dev=8", "data.num_test=8",
        "data.seed=1", "decoder.name=lstm", "decoder.embed_dim=16", "decoder.hidden_dim=32",
        "decoder.attention_dim=16", "train.epochs=8", "train.batch_size=8", "train.lr=0.01",
        "train.seed=0", "train.device=cpu", "train.eval_max_len=8",
        f"train.out_dir={tmp_path_factory.mktemp('seeded_run')}",
    ])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the float reductions, hence the trained weights, depend on it
    try:
        yield fit(cfg, progress=False).best_checkpoint
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def known_image(shapes_root) -> str:
    return by_split(read_shapes(shapes_root), "test")[KNOWN_IMAGE].image


def test_api_gives_the_known_caption_and_greedy_decoding_agrees(seeded_checkpoint, known_image):
    # fp32: precision "auto" decodes in bf16 on CPUs that have it, which may change a word
    cap = captionkit.load(seeded_checkpoint, precision="fp32")
    res = cap.caption(known_image, beam_size=1)  # greedy (the default is beam 3)
    assert res.text == KNOWN_CAPTION and res.words == KNOWN_CAPTION.split()
    assert res.attention.shape == (len(res.words), *cap.grid)
    assert res.attention.reshape(len(res.words), -1).sum(1) == pytest.approx(1.0, abs=1e-4)
    assert res.image.size == (96, 96)
    assert cap.caption(Image.open(known_image), 1).text == KNOWN_CAPTION  # a PIL image too

    model, _, vocab, _ = load_checkpoint(seeded_checkpoint)  # eager encoder, no Captioner
    x = model.encoder.preprocess(Image.open(known_image).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        (hyp,) = greedy(model.decoder, model.encode(x), start_id=vocab.start_id,
                        end_id=vocab.end_id, max_len=vocab.max_len, banned=vocab.banned)
    assert vocab.decode(hyp.tokens) == res.text
    assert hyp.score == pytest.approx(res.score, abs=1e-4)


def test_beam_alternatives(trained_checkpoint, shapes_root):
    cap = captionkit.load(trained_checkpoint)
    res = cap.caption(read_shapes(shapes_root)[1].image, beam_size=3)
    assert len(res.alternatives) == 3 and res.alternatives[0][0] == res.text
    scores = [s for _, s in res.alternatives]
    assert scores == sorted(scores, reverse=True)


def test_listing_functions():
    assert captionkit.list_encoders() == list_encoders()
    assert "shapes_cnn" in captionkit.list_encoders()
    assert captionkit.list_decoders() == list_decoders()
    assert captionkit.Captioner is Captioner and captionkit.BaseCaptioner is BaseCaptioner
    assert captionkit.CaptionResult is CaptionResult


def _public(cls) -> dict[str, list[str]]:
    """Public method -> its parameter names."""
    return {name: list(inspect.signature(getattr(cls, name)).parameters) for name in dir(cls)
            if not name.startswith("_") and callable(getattr(cls, name))}


def test_both_runtimes_satisfy_one_contract():
    """The PyTorch and onnxruntime captioners: the same public methods, captioning inherited
    from BaseCaptioner, only ``encode`` their own. (That they give the same captions is
    tests/infer/test_export.py's test_onnxruntime_captions_match_torch.)"""
    assert issubclass(Captioner, BaseCaptioner) and issubclass(OnnxCaptioner, BaseCaptioner)
    assert not issubclass(OnnxCaptioner, Captioner)
    assert BaseCaptioner.__abstractmethods__ == frozenset({"encode"})
    with pytest.raises(TypeError, match="encode"):
        BaseCaptioner(None, None, None, {}, None, (1, 1))
    torch_api, onnx_api = _public(Captioner), _public(OnnxCaptioner)
    assert set(torch_api) == set(onnx_api) == {"caption", "caption_batch", "caption_pixels",
                                               "encode", "from_checkpoint"}
    for name in ("caption", "caption_batch", "caption_pixels", "_result"):
        assert getattr(Captioner, name) is getattr(OnnxCaptioner, name) \
            is getattr(BaseCaptioner, name)
    assert torch_api == onnx_api


def test_a_new_runtime_only_needs_encode(seeded_checkpoint, known_image):
    model, cfg, vocab, meta = load_checkpoint(seeded_checkpoint)

    class Eager(BaseCaptioner):
        def encode(self, x):
            return model.encode(x)

    cap = Eager(model.decoder, vocab, cfg, meta, model.encoder.preprocess, model.encoder.grid)
    torch_cap = Captioner(model, cfg, vocab, meta, precision="fp32")
    for c in (cap, torch_cap):
        assert (c.decoder, c.vocab, c.cfg, c.meta) == (model.decoder, vocab, cfg, meta)
        assert (c.preprocess, c.grid) == (model.encoder.preprocess, tuple(model.encoder.grid))
        assert (c.device, c.dtype) == (torch.device("cpu"), torch.float32)
    assert cap.caption(known_image, 1).text == torch_cap.caption(known_image, 1).text == \
        KNOWN_CAPTION


def test_fast_encoder_path_matches_eager(trained_checkpoint, shapes_root):
    fast = captionkit.load(trained_checkpoint)
    eager = Captioner.from_checkpoint(trained_checkpoint)
    eager.fast = False
    paths = [r.image for r in read_shapes(shapes_root)[:3]]
    x = torch.stack([fast.preprocess(Image.open(p).convert("RGB")) for p in paths])
    assert torch.allclose(fast.encode(x), eager.encode(x), atol=1e-4)  # batch 3 -> trace of 4
    assert [r.text for r in fast.caption_batch(paths, beam_size=2)] == \
        [r.text for r in eager.caption_batch(paths, beam_size=2)]
    assert set(fast._traced) == {4}
