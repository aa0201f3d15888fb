import gc
import json
import weakref

import pytest
import torch

from captionkit import fastpath
from captionkit.config import DecoderConfig, TrainConfig
from captionkit.engine import check_finite, fit, use_fast_path
from captionkit.errors import CaptionKitError, NonFiniteLossError
from captionkit.fastpath import FastTrainStep, group_captions, grouped_loss, vocab_loss
from captionkit.losses import caption_loss
from captionkit.models.decoders import build_decoder
from captionkit.optim import build_optimizer, update

V, D, N = 23, 12, 6


def batch(seed: int = 0):
    """3 images with 3, 1 and 4 captions of different lengths, in collate's (C, T) layout."""
    g = torch.Generator().manual_seed(seed)
    counts, lengths = [3, 1, 4], [5, 3, 7, 4, 6, 2, 5, 7]
    image_index = torch.tensor([i for i, c in enumerate(counts) for _ in range(c)])
    tokens = torch.zeros(len(lengths), max(lengths) + 1, dtype=torch.long)
    for row, n in enumerate(lengths):
        tokens[row, 0] = 1
        tokens[row, 1:n] = torch.randint(4, V, (n - 1,), generator=g)
        tokens[row, n] = 2
    feats = torch.randn(len(counts), N, D, generator=g)
    return feats, tokens, image_index


class Model(torch.nn.Module):
    """Just enough of a CaptionModel for the optimizer: a decoder and an empty encoder."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder, self.encoder = decoder, torch.nn.Linear(1, 1).requires_grad_(False)


def make_decoder(name: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = DecoderConfig(name=name, embed_dim=8, hidden_dim=10, attention_dim=9, dropout=0.0)
    return build_decoder(cfg, V, D).double()


def test_group_captions_places_every_caption_once():
    _, tokens, image_index = batch()
    g = group_captions(tokens, image_index, 3, k=5, t=10)
    assert g.shape == (3, 5, 10)
    seen = 0
    for img in range(3):
        rows = tokens[image_index == img]
        assert torch.equal(g[img, : len(rows), : tokens.size(1)], rows)
        assert g[img, len(rows):].eq(0).all() and g[img, :, tokens.size(1):].eq(0).all()
        seen += len(rows)
    assert seen == len(tokens)
    with pytest.raises(ValueError, match="do not fit"):
        group_captions(tokens, image_index, 3, k=3)


@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("alpha_c", [1.0, 0.0])
def test_grouped_loss_and_gradients_equal_the_reference(name, alpha_c):
    feats, tokens, image_index = batch()
    feats = feats.double()
    dec = make_decoder(name)
    logits, alphas = dec(feats, tokens[:, :-1], image_index)
    ref, ref_ce = caption_loss(logits, alphas, tokens[:, 1:], 0, alpha_c)
    ref_grads = torch.autograd.grad(ref, list(dec.parameters()))
    grouped = group_captions(tokens, image_index, 3, k=4, t=tokens.size(1) + 2)
    loss, ce = grouped_loss(dec, feats, grouped, alpha_c)
    grads = torch.autograd.grad(loss, list(dec.parameters()))
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ce, ref_ce, rtol=1e-10, atol=1e-12)
    for (pname, _), g, r in zip(dec.named_parameters(), grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10, msg=pname)


def test_late_weight_gradients_keep_no_graph_alive(monkeypatch):
    """The layers' inputs handed to _LateWeightGrad are detached: an input still attached to
    the graph would hold the Function's context (and every tensor it saved) forever, a
    reference cycle through C++ that Python's collector cannot see."""
    feats, tokens, image_index = batch()
    dec = make_decoder("lstm")
    contexts = []
    forward = fastpath._LateWeightGrad.forward

    def recording(ctx, *args):
        contexts.append(weakref.ref(ctx))
        return forward(ctx, *args)
    monkeypatch.setattr(fastpath._LateWeightGrad, "forward", staticmethod(recording))
    loss, ce = grouped_loss(dec, feats.double(), group_captions(tokens, image_index, 3, k=4), 1.0)
    loss.backward()
    del loss, ce
    gc.collect()
    assert len(contexts) == 2 and all(ref() is None for ref in contexts)


def test_compiled_vocab_loss_equals_the_eager_one_for_every_length():
    """The compiled vocabulary head (what the GPU step runs) gives the eager value and
    gradients, also after the caption length changes (recompiled with a dynamic length)."""
    torch.manual_seed(0)
    w, b = torch.randn(V, 8, requires_grad=True), torch.randn(V, requires_grad=True)
    head = torch.compile(vocab_loss)
    for t in (5, 7, 9):
        x = torch.randn(t, 3, 4, 8, requires_grad=True)
        targets = torch.randint(0, V, (t, 3, 4))
        targets[-1, 0] = 0  # padding is ignored
        got, want = head(x, w, b, targets), vocab_loss(x, w, b, targets)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
        for g, r in zip(torch.autograd.grad(got, (x, w, b)), torch.autograd.grad(want, (x, w, b)),
                        strict=True):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_fast_step_update_equals_the_reference_update():
    feats, tokens, image_index = batch(1)
    cfg = TrainConfig(lr=1e-2, grad_clip=0.5, alpha_c=1.0)
    ref = Model(make_decoder("lstm").float())
    fast = Model(make_decoder("lstm").float())
    ref_opt, fast_opt = build_optimizer(ref, cfg), build_optimizer(fast, cfg, fused=True)
    step = FastTrainStep(fast, fast_opt, cfg)
    grouped = group_captions(tokens, image_index, 3, k=4)
    for _ in range(3):
        logits, alphas = ref.decoder(feats, tokens[:, :-1], image_index)
        loss, _ = caption_loss(logits, alphas, tokens[:, 1:], 0, cfg.alpha_c)
        update(ref, ref_opt, loss, cfg, 0)
        out = step(feats, grouped)
        torch.testing.assert_close(out[0], loss.detach(), rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(ref.named_parameters(), fast.parameters(), strict=True):
        if name == "decoder.attention.score.bias":
            continue  # softmax ignores it: its gradient is rounding noise, which Adam magnifies
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert int(step.first_bad) == -1 and int(step.step_no) == 3


def test_non_finite_loss_skips_the_update_and_names_the_step():
    feats, tokens, image_index = batch(2)
    cfg = TrainConfig(lr=1e-2)
    model = Model(make_decoder("gru").float())
    step = FastTrainStep(model, build_optimizer(model, cfg, fused=True), cfg)
    grouped = group_captions(tokens, image_index, 3)
    step(feats, grouped)
    before = [p.detach().clone() for p in model.parameters()]
    out = step(torch.full_like(feats, float("nan")), grouped)
    assert out[2].item() == 0.0  # not finite
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b) and torch.isfinite(b).all()
    step(feats, grouped)  # training goes on; the first bad step is kept
    assert int(step.first_bad) == 1
    with pytest.raises(NonFiniteLossError, match="step 1") as e:
        check_finite(step)
    assert e.value.step == 1


def test_fast_path_choice(tiny_config):
    from captionkit.models.captioner import build_model

    cpu = torch.device("cpu")
    frozen = tiny_config.override(["encoder.trainable=false"])
    model = build_model(frozen, 20)
    assert not use_fast_path(frozen, model, cpu)  # auto: CUDA only
    assert use_fast_path(frozen.override(["train.fast_path=always"]), model, cpu)
    assert use_fast_path(frozen, model, torch.device("cuda"))  # auto on CUDA
    with pytest.raises(CaptionKitError, match="fast_path=always"):
        use_fast_path(tiny_config.override(["train.fast_path=always"]), build_model(tiny_config, 20),
                      cpu)  # the shapes encoder trains
    with pytest.raises(CaptionKitError, match="auto, always or never"):
        use_fast_path(frozen.override(["train.fast_path=maybe"]), model, cpu)


def test_fit_with_the_fast_path_follows_the_reference(tiny_config, tmp_path):
    """Same data order, same initial weights, no dropout: per-epoch losses agree."""
    base = tiny_config.override(["encoder.trainable=false", "decoder.dropout=0.0",
                                 "train.epochs=2"])
    ref = fit(base.override([f"train.out_dir={tmp_path / 'ref'}"]), progress=False)
    fast = fit(base.override([f"train.out_dir={tmp_path / 'fast'}", "train.fast_path=always"]),
               progress=False)
    for a, b in zip(ref.history, fast.history, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-3 * a["loss"], (a, b)
    rows = [json.loads(x) for x in (tmp_path / "fast" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("amp,kernel", [(False, False), (True, False), (True, True)])
def test_compiled_cuda_graph_step_follows_the_eager_step(amp, kernel):
    """Captured per batch shape (two shapes here), replayed; the warm-up before each capture
    leaves no trace (the first update equals the eager one). ``kernel``: with the Triton
    attention-score kernel inside the compiled, graphed step."""
    dev = torch.device("cuda")
    cfg = TrainConfig(lr=1e-3, grad_clip=5.0, amp=amp)
    models = [Model(make_decoder("lstm").float()).to(dev) for _ in range(2)]
    eager = FastTrainStep(models[0], build_optimizer(models[0], cfg, fused=True), cfg)
    graphed = FastTrainStep(models[1], build_optimizer(models[1], cfg, fused=True), cfg,
                            compile=True, graphs=True, kernel=kernel, kernel_min_images=1)
    tol = dict(rtol=2e-2, atol=1e-3) if amp else dict(rtol=1e-3, atol=1e-4)  # fused kernels
    for i in range(9):  # three shapes in turn: each graph must keep writing live gradients
        feats, tokens, image_index = batch(10 + i % 3)
        n = 3 - i % 3
        keep = image_index < n
        grouped = group_captions(tokens[keep], image_index[keep], n, k=4, t=8)
        f, g = feats[:n].to(dev), grouped.to(dev)
        torch.testing.assert_close(graphed(f, g)[:2], eager(f, g)[:2], **tol)
    assert len(graphed._graphs) == 3 and int(graphed.first_bad) == -1


@cuda
def test_fit_on_cuda_takes_the_fast_path_and_follows_the_reference(tiny_config, tmp_path):
    base = tiny_config.override(["encoder.trainable=false", "decoder.dropout=0.0",
                                 "train.epochs=2", "train.device=cuda"])
    ref = fit(base.override([f"train.out_dir={tmp_path / 'ref'}", "train.fast_path=never"]),
              progress=False)
    fast = fit(base.override([f"train.out_dir={tmp_path / 'fast'}"]), progress=False)
    for a, b in zip(ref.history, fast.history, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-3 * a["loss"], (a, b)
