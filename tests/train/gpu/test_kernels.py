"""The Triton attention-score kernel equals the PyTorch expression, forward and backward.

On the CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, which must be set
before Triton is imported, hence a subprocess); on CUDA they run compiled, with the hardware
tanh, in bf16 as training uses them.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from captionkit.models.attention import additive_score as decoder_score


def additive_score(keys, q, w):
    """The decoder's score without its bias, in the kernel's signature (w (A,))."""
    return decoder_score(keys, q, w.view(1, -1), None)

triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

INTERPRETED = textwrap.dedent("""
    import itertools

    import torch
    from types import SimpleNamespace

    from captionkit.train.gpu.kernels import additive_score as fused, attention_context
    from captionkit.train.gpu.kernels import attention_score
    from captionkit.models.attention import additive_score
    from captionkit.models.attention import attention_context as context_reference
    from captionkit.models.decoders import gru_update, lstm_update
    from captionkit.train.gpu.grouped import step_for

    def reference(keys, q, w):
        return additive_score(keys, q, w.view(1, -1), None)

    lstm_step = step_for(SimpleNamespace(cell_update=lstm_update))
    gru_step = step_for(SimpleNamespace(cell_update=gru_update))

    torch.manual_seed(0)
    # K=5 captions (not a power of 2), N and A not multiples of the kernel's blocks; the
    # backward's regions split in 2 and in 7 (few images)
    for B, K, N, A in [(3, 5, 7, 20), (2, 3, 40, 70), (1, 1, 5, 64), (2, 5, 196, 24)]:
        keys = torch.randn(B, N, A, requires_grad=True)
        q = torch.randn(B, K, A, requires_grad=True)
        w = torch.randn(A, requires_grad=True)
        g = torch.randn(B, K, N)
        got = fused(keys, q, w)
        want = reference(keys, q, w)
        assert got.shape == (B, K, N) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for a, b in zip(torch.autograd.grad(got, (keys, q, w), g),
                        torch.autograd.grad(want, (keys, q, w), g)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    # the context kernel: alpha @ feats, gradients of alpha (and of feats when it needs one)
    for B, K, N, D in [(3, 5, 7, 20), (2, 3, 40, 70), (2, 5, 196, 300)]:
        for feats_grad in (False, True):
            alpha = torch.softmax(torch.randn(B, K, N), -1).requires_grad_(True)
            feats = torch.randn(B, N, D, requires_grad=feats_grad)
            g = torch.randn(B, K, D)
            got, want = attention_context(alpha, feats), context_reference(alpha, feats)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            wrt = (alpha, feats) if feats_grad else (alpha,)
            for a, b in zip(torch.autograd.grad(got, wrt, g), torch.autograd.grad(want, wrt, g)):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

    # a whole recurrent step with the kernels equals the step without them, also hoisted
    # (the features already multiplied by the context's weight: (B, N, G), no w_c)
    B, K, N, D, A, H = 2, 5, 6, 12, 9, 10
    for (step, gates), hoist in itertools.product([(lstm_step, 4), (gru_step, 3)], [0, 1]):
        torch.manual_seed(1)
        args = [torch.randn(B, N, gates * H if hoist else D), torch.randn(B, N, A),
                torch.randn(B, K, gates * H), torch.randn(B, K, H), torch.randn(B, K, H),
                torch.randn(A + 1 + gates * H, H), torch.randn(A + 1 + gates * H),
                None if hoist else torch.randn(gates * H, D), torch.randn(1, A), torch.randn(1)]
        wrt = [a.requires_grad_(True) for a in args if a is not None]
        outs = [step(*args, score=attention_score, context=attention_context), step(*args)]
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        loss = [sum(o.square().sum() for o in out) for out in outs]
        for a, b in zip(torch.autograd.grad(loss[0], wrt), torch.autograd.grad(loss[1], wrt)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    print("ok")
""")


@triton
def test_kernel_equals_the_reference_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"


@cuda
@triton
def test_context_kernel_on_cuda_equals_the_reference():
    from captionkit.models.attention import attention_context
    from captionkit.train.gpu.kernels import attention_context as fused

    torch.manual_seed(0)
    dev = torch.device("cuda")
    B, K, N, D = 7, 5, 196, 2048
    alpha = torch.softmax(torch.randn(B, K, N, device=dev), -1).requires_grad_(True)
    feats = torch.randn(B, N, D, device=dev).to(torch.bfloat16).requires_grad_(True)
    g = torch.randn(B, K, D, device=dev).to(torch.bfloat16)
    got = fused(alpha, feats)
    ref_in = [alpha.detach().double().requires_grad_(True),
              feats.detach().double().requires_grad_(True)]
    want = attention_context(*ref_in)
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2)
    grads = torch.autograd.grad(got, (alpha, feats), g)
    refs = torch.autograd.grad(want, ref_in, g.double())
    for a, b in zip(grads, refs, strict=True):
        scale = b.abs().max()
        torch.testing.assert_close(a.double() / scale, b / scale, rtol=2e-2, atol=2e-2)


@cuda
@triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_on_cuda_equals_the_reference(dtype):
    from captionkit.train.gpu.kernels import additive_score as fused

    torch.manual_seed(0)
    dev = torch.device("cuda")
    B, K, N, A = 7, 5, 196, 512  # the benchmark's sizes
    keys = torch.randn(B, N, A, device=dev).mul(0.5).to(dtype).requires_grad_(True)
    q = torch.randn(B, K, A, device=dev).mul(0.5).to(dtype).requires_grad_(True)
    w = torch.randn(A, device=dev).mul(0.05).requires_grad_(True)
    g = torch.randn(B, K, N, device=dev)
    got = fused(keys, q, w)
    ref_in = [t.detach().double().requires_grad_(True) for t in (keys, q, w)]
    want = additive_score(*ref_in)
    # tanh.approx.f32 (relative error ~6e-4) and bf16 gradients: compare at that precision
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=5e-3, atol=5e-3)
    torch.testing.assert_close(got.double(), want, **tol)
    grads = torch.autograd.grad(got, (keys, q, w), g)
    refs = torch.autograd.grad(want, ref_in, g.double())
    for a, b in zip(grads, refs, strict=True):
        scale = b.abs().max()
        torch.testing.assert_close(a.double() / scale, b / scale, **tol)
