"""FastTrainStep: the fast path's optimizer update against the reference update, compiled,
in Triton's interpreter, and (with a GPU) graphed; the engine's choice of the fast path."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captionkit.config import TrainConfig
from captionkit.errors import CaptionKitError, NonFiniteLossError
from captionkit.train.fit import fit
from captionkit.train.gpu import grouped as fastpath
from captionkit.train.gpu.grouped import group_captions
from captionkit.train.gpu.step import FastTrainStep, check_finite, use_fast_path
from captionkit.train.losses import caption_loss
from captionkit.train.optim import build_optimizer, update
from tests.train.gpu.test_grouped import batch, make_decoder


class Model(torch.nn.Module):
    """Just enough of a CaptionModel for the optimizer: a decoder and an empty encoder."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder, self.encoder = decoder, torch.nn.Linear(1, 1).requires_grad_(False)


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
    # the choices themselves are refused when the config is built (tests/test_config.py)
    with pytest.raises(CaptionKitError, match="train.fast_path"):
        frozen.override(["train.fast_path=maybe"])


def test_other_attention_mechanisms_run_the_reference_path_and_say_so(tiny_config, capsys):
    from captionkit.models.captioner import build_model

    cfg = tiny_config.override(["encoder.trainable=false", "decoder.attention=general"])
    model = build_model(cfg, 20)
    assert not use_fast_path(cfg, model, torch.device("cuda"))
    assert "general attention trains on the reference path" in capsys.readouterr().out
    with pytest.raises(CaptionKitError, match="declares the fast path"):
        use_fast_path(cfg.override(["train.fast_path=always"]), model, torch.device("cpu"))


def test_fast_path_never_trains_a_decoder_that_did_not_declare_it(tiny_config):
    """A subclass of the LSTM decoder inherits its layers but not its declaration: the fast
    path would compute the parent's maths, so it is not used (auto) or refused (always)."""
    from captionkit.models.captioner import build_model
    from captionkit.models.decoders import AttentionRNNDecoder

    class Other(AttentionRNNDecoder):
        pass

    frozen = tiny_config.override(["encoder.trainable=false"])
    model = build_model(frozen, 20)
    model.decoder = Other(20, model.encoder.out_dim, frozen.decoder)
    assert not use_fast_path(frozen, model, torch.device("cuda"))
    with pytest.raises(CaptionKitError, match="declares the fast path"):
        use_fast_path(frozen.override(["train.fast_path=always"]), model, torch.device("cpu"))


@pytest.mark.parametrize("hoist", [0, 100])
def test_fit_with_the_fast_path_follows_the_reference(tiny_config, tmp_path, monkeypatch, hoist):
    """Same data order, same initial weights, no dropout: per-epoch losses agree, also with
    ``train.fast_hoist_images`` (which reaches the step: every batch is hoisted)."""
    hoisted = []
    product = fastpath._context_product

    def recording(*args):
        hoisted.append(args[-1])
        return product(*args)
    monkeypatch.setattr(fastpath, "_context_product", recording)
    base = tiny_config.override(["encoder.trainable=false", "decoder.dropout=0.0",
                                 "train.epochs=2"])
    ref = fit(base.override([f"train.out_dir={tmp_path / 'ref'}"]), progress=False)
    fast = fit(base.override([f"train.out_dir={tmp_path / 'fast'}", "train.fast_path=always",
                              f"train.fast_hoist_images={hoist}"]), progress=False)
    for a, b in zip(ref.history, fast.history, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-3 * a["loss"], (a, b)
    rows = [json.loads(x) for x in (tmp_path / "fast" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert hoisted and set(hoisted) == {hoist > 0}


def test_fit_hands_the_compile_mode_and_hoist_to_the_fast_step(tiny_config, tmp_path,
                                                              monkeypatch):
    from captionkit.train.gpu import step as gpu_step

    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs)
        return FastTrainStep(*args, **kwargs)
    monkeypatch.setattr(gpu_step, "FastTrainStep", recording)
    fit(tiny_config.override(["encoder.trainable=false", "train.epochs=1", "train.max_steps=1",
                              "train.fast_path=always", "train.fast_hoist_images=3",
                              "train.fast_compile_mode=max-autotune-no-cudagraphs",
                              f"train.out_dir={tmp_path}"]), progress=False)
    assert len(seen) == 1
    assert seen[0]["compile_mode"] == "max-autotune-no-cudagraphs"
    assert seen[0]["hoist_max_images"] == 3
    assert seen[0]["compile"] is False  # the CPU: eager, so the mode is carried, not used


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def follow_eager(dev: torch.device, cfg: TrainConfig, rounds: int, tol: dict, **fast):
    """A FastTrainStep with ``fast``'s options, checked against the eager step on batches of
    3, 2 and 1 images in turn (a new shape each time, then the same shapes again)."""
    models = [Model(make_decoder("lstm").float()).to(dev) for _ in range(2)]
    eager = FastTrainStep(models[0], build_optimizer(models[0], cfg, fused=True), cfg)
    step = FastTrainStep(models[1], build_optimizer(models[1], cfg, fused=True), cfg, **fast)
    for i in range(rounds):
        feats, tokens, image_index = batch(10 + i % 3)
        n = 3 - i % 3
        keep = image_index < n
        grouped = group_captions(tokens[keep], image_index[keep], n, k=4, t=8)
        f, g = feats[:n].to(dev), grouped.to(dev)
        torch.testing.assert_close(step(f, g)[:2], eager(f, g)[:2], **tol)
    return step


def test_compiled_step_follows_the_eager_step_on_the_cpu():
    """torch.compile of the step function (as on a GPU, without graphs or kernels), for a
    batch of 3 images and one of 2 with the context's product hoisted: both compile and give
    the eager step's loss."""
    cfg = TrainConfig(lr=1e-3, grad_clip=5.0)
    follow_eager(torch.device("cpu"), cfg, 2, dict(rtol=1e-4, atol=1e-5), compile=True,
                 hoist_max_images=2)


INTERPRETED = """
import sys
import torch
sys.path.insert(0, {root!r})
from tests.train.gpu.test_step import follow_eager
from captionkit.train.gpu import grouped as fastpath
from captionkit.config import TrainConfig
follow_eager(torch.device("cpu"), TrainConfig(lr=1e-3, grad_clip=5.0, amp=True), 3,
             dict(rtol=2e-2, atol=1e-3), compile=True, kernel=True, kernel_min_images=1,
             hoist_max_images=2)
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")
def test_compiled_bf16_step_with_kernels_follows_the_eager_step_in_the_interpreter():
    """The GPU's configuration short of the GPU and its graphs: bf16 autocast (where the CPU
    has it), torch.compile, the Triton attention kernels in Triton's CPU interpreter at every
    batch size, the context's product hoisted for batches of up to 2 images."""
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    code = INTERPRETED.format(root=str(Path(__file__).resolve().parents[3]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


@cuda
@pytest.mark.parametrize("amp,kernel,hoist", [(False, False, False), (True, False, False),
                                              (True, True, False), (True, True, True)])
def test_compiled_cuda_graph_step_follows_the_eager_step(amp, kernel, hoist):
    """Captured per batch shape (three shapes here), replayed, each graph keeping to write
    live gradients; the warm-up before each capture leaves no trace (the first update equals
    the eager one). ``kernel``: with the Triton attention kernels inside the compiled, graphed
    step; ``hoist``: batches of up to 2 images with the context's product hoisted (the eager
    step never hoists)."""
    cfg = TrainConfig(lr=1e-3, grad_clip=5.0, amp=amp)
    tol = dict(rtol=2e-2, atol=1e-3) if amp else dict(rtol=1e-3, atol=1e-4)  # fused kernels
    graphed = follow_eager(torch.device("cuda"), cfg, 9, tol, compile=True, graphs=True,
                           kernel=kernel, kernel_min_images=1,
                           hoist_max_images=2 if hoist else 0)
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
