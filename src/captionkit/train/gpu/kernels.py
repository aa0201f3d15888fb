"""The additive-attention score as one Triton kernel forward and one backward (GPU fast path).

The score of Show, Attend and Tell's attention is ``e[b,k,n] = sum_a w[a] tanh(keys[b,n,a] +
q[b,k,a])``: image b's keys (N regions x A) against the queries of its K captions. Written in
PyTorch it materialises (B, K, N, A) tensors; compiled, the backward becomes two reductions that
each recompute ``tanh`` with the accurate (slow) libdevice function. Here:

- forward: each program scores a block of (caption, region) rows of one image, reading the
  image's keys from cache for its K captions, accumulating over A in fp32;
- backward: each program owns one image and a slice of A and walks all regions and captions, so
  the gradients of the keys (summed over captions), of the queries (summed over regions) and
  the partial gradient of ``w`` come out of one pass, with no atomics;
- the context ``alpha @ feats`` (K = 5 query rows per image: cuBLAS pads them to a 64- or
  128-row tile, so a batched matrix product spends most of its time on padding) as a kernel
  that streams each image's features once through 16-row tensor-core products, forward and
  backward (the gradient of alpha);
- ``tanh`` is the hardware's ``tanh.approx.f32`` (relative error ~6e-4, below bf16's rounding)
  on CUDA; under ``TRITON_INTERPRET=1`` (tests on the CPU) a sigmoid form is used instead.

:func:`additive_score` is a ``torch.library`` custom op with its own autograd formula, so
``torch.compile`` and CUDA-graph capture treat it as one opaque call.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

FAST_TANH = os.environ.get("TRITON_INTERPRET", "0") != "1"  # inline PTX needs a real GPU


@triton.jit
def _tanh(x, FAST: tl.constexpr):
    if FAST:
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _dot(a, b, acc, FAST: tl.constexpr):
    """``acc + a @ b`` in b's (half) precision, accumulated in fp32. Triton's CPU interpreter
    multiplies bf16 tiles as raw integers, so there (tests) in fp32."""
    if FAST:
        return tl.dot(a.to(b.dtype), b, acc)
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)


@triton.jit
def _tile(ptr, rows, cols, stride, n_rows, n_cols):
    """``ptr[rows, cols]`` of a row-major matrix (row stride ``stride``), zeros outside its
    ``n_rows`` x ``n_cols``."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _put(ptr, rows, cols, stride, n_rows, n_cols, value):
    """``ptr[rows, cols] = value`` (in ptr's dtype) inside ``n_rows`` x ``n_cols``."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    tl.store(ptr + rows[:, None] * stride + cols[None, :], value.to(ptr.dtype.element_ty),
             mask=mask)


def _configs(pairs: list[tuple[int, int, int]], names: tuple[str, str]) -> list:
    """Autotuning candidates; under the interpreter (CPU tests) just the first."""
    chosen = pairs if FAST_TANH else pairs[:1]
    return [triton.Config({names[0]: a, names[1]: b}, num_warps=w) for a, b, w in chosen]


# Tuned once per shape on first use (outside CUDA-graph capture: the fast step warms up first).
# Each candidate overwrites its outputs, so the timing runs leave nothing behind.
@triton.autotune(configs=_configs([(64, 64, 4), (32, 64, 2), (64, 32, 2), (128, 64, 4),
                                   (32, 32, 1), (128, 32, 4)], ("BLOCK_R", "BLOCK_A")),
                 key=["B", "K", "N", "A"])
@triton.jit
def _score_fwd(keys, q, w, out, B, K, N, A, skb, skn, sqb, sqk, sob, sok,
               BLOCK_R: tl.constexpr, BLOCK_A: tl.constexpr, FAST: tl.constexpr):
    b = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)  # (caption, region) pairs
    live = rows < K * N
    k, n = rows // N, rows % N
    acc = tl.zeros((BLOCK_R,), tl.float32)
    for a0 in range(0, A, BLOCK_A):
        cols = a0 + tl.arange(0, BLOCK_A)
        m = live[:, None] & (cols[None, :] < A)
        kt = tl.load(keys + b * skb + n[:, None] * skn + cols[None, :], mask=m, other=0.0)
        qt = tl.load(q + b * sqb + k[:, None] * sqk + cols[None, :], mask=m, other=0.0)
        wt = tl.load(w + cols, mask=cols < A, other=0.0).to(tl.float32)
        t = _tanh(kt.to(tl.float32) + qt.to(tl.float32), FAST)  # (BLOCK_R, BLOCK_A)
        acc += tl.sum(t * wt[None, :], axis=1)
    tl.store(out + b * sob + k * sok + n, acc, mask=live)


@triton.autotune(configs=_configs([(32, 32, 1), (32, 32, 2), (32, 64, 2), (16, 64, 2),
                                   (64, 32, 2), (32, 64, 4), (16, 32, 1), (32, 16, 1)],
                                  ("BLOCK_N", "BLOCK_A")),
                 key=["B", "K", "N", "A", "CHUNK"])
@triton.jit
def _score_bwd(de, keys, q, w, dkeys, dq, dw, B, K, N, A, CHUNK, sdb, sdk, skb, skn, sqb,
               sqk, sgs, sgb, sgk, KP: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_A: tl.constexpr, FAST: tl.constexpr):
    b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_A + tl.arange(0, BLOCK_A)
    split = tl.program_id(2)  # this program's CHUNK regions
    cmask = cols < A
    wt = tl.load(w + cols, mask=cmask, other=0.0).to(tl.float32)
    caps = tl.arange(0, KP)
    acc_q = tl.zeros((KP, BLOCK_A), tl.float32)  # sum over regions, per caption
    acc_w = tl.zeros((BLOCK_N, BLOCK_A), tl.float32)  # summed over regions at the end
    n_end = tl.minimum(split * CHUNK + CHUNK, N)
    for n0 in range(split * CHUNK, n_end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < n_end
        kt = _tile(keys + b * skb, n, cols, skn, n_end, A).to(tl.float32)  # (BLOCK_N, BLOCK_A)
        acc_k = tl.zeros((BLOCK_N, BLOCK_A), tl.float32)  # sum over captions
        for k in range(K):
            qt = tl.load(q + b * sqb + k * sqk + cols, mask=cmask, other=0.0).to(tl.float32)
            g = tl.load(de + b * sdb + k * sdk + n, mask=nmask, other=0.0)  # (BLOCK_N,)
            t = _tanh(kt + qt[None, :], FAST)
            d = g[:, None] * (1.0 - t * t)  # d e / d (keys + q), without w
            acc_k += d
            acc_q = tl.where(caps[:, None] == k, acc_q + tl.sum(d, axis=0)[None, :], acc_q)
            acc_w += g[:, None] * t
        _put(dkeys + b * skb, n, cols, skn, n_end, A, acc_k * wt[None, :])
    _put(dq + split * sgs + b * sgb, caps, cols, sgk, K, A, acc_q * wt[None, :])
    tl.store(dw + (split * B + b) * A + cols, tl.sum(acc_w, axis=0), mask=cmask)


@triton.autotune(configs=_configs([(32, 128, 4), (64, 128, 4), (32, 256, 4), (64, 64, 4),
                                   (32, 64, 2), (64, 256, 8)], ("BLOCK_N", "BLOCK_D")),
                 key=["B", "K", "N", "D"])
@triton.jit
def _context_fwd(alpha, feats, out, B, K, N, D, sab, sak, sfb, sfn, sob, sok,
                 KP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 FAST: tl.constexpr):
    b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    caps = tl.arange(0, KP)
    acc = tl.zeros((KP, BLOCK_D), tl.float32)
    for n0 in range(0, N, BLOCK_N):  # out = alpha @ feats, a block of D columns
        n = n0 + tl.arange(0, BLOCK_N)
        a = _tile(alpha + b * sab, caps, n, sak, K, N)  # (KP, BLOCK_N)
        acc = _dot(a, _tile(feats + b * sfb, n, cols, sfn, N, D), acc, FAST)  # (KP, BLOCK_D)
    _put(out + b * sob, caps, cols, sok, K, D, acc)


@triton.autotune(configs=_configs([(32, 128, 4), (64, 128, 4), (32, 256, 4), (64, 64, 4),
                                   (16, 256, 4), (64, 256, 8)], ("BLOCK_N", "BLOCK_D")),
                 key=["B", "K", "N", "D"])
@triton.jit
def _context_bwd(dctx, feats, dalpha, B, K, N, D, sgb, sgk, sfb, sfn, sab, sak,
                 KP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 FAST: tl.constexpr):
    b = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    caps = tl.arange(0, KP)
    acc = tl.zeros((KP, BLOCK_N), tl.float32)
    for d0 in range(0, D, BLOCK_D):  # dalpha = dctx @ featsᵀ, a block of N columns
        cols = d0 + tl.arange(0, BLOCK_D)
        g = _tile(dctx + b * sgb, caps, cols, sgk, K, D)  # (KP, BLOCK_D)
        f = _tile(feats + b * sfb, n, cols, sfn, N, D)  # (BLOCK_N, BLOCK_D)
        acc = _dot(g, tl.trans(f), acc, FAST)  # (KP, BLOCK_N)
    _put(dalpha + b * sab, caps, n, sak, K, N, acc)


def _check(keys: Tensor, q: Tensor, w: Tensor) -> None:
    if keys.dim() != 3 or q.dim() != 3 or w.dim() != 1 or keys.size(0) != q.size(0) \
            or keys.size(2) != q.size(2) or w.size(0) != keys.size(2):
        raise ValueError(f"additive_score wants keys (B, N, A), q (B, K, A), w (A,); got "
                         f"{tuple(keys.shape)}, {tuple(q.shape)}, {tuple(w.shape)}")


@torch.library.custom_op("captionkit::additive_score", mutates_args=())
def additive_score(keys: Tensor, q: Tensor, w: Tensor) -> Tensor:
    """``sum_a w[a] tanh(keys[b,n,a] + q[b,k,a])``: keys (B, N, A), q (B, K, A), w (A,) ->
    scores (B, K, N) in fp32 (sums in fp32 whatever the input dtype)."""
    _check(keys, q, w)
    keys, q, w = keys.contiguous(), q.contiguous(), w.contiguous()
    B, N, A = keys.shape
    K = q.size(1)
    out = torch.empty(B, K, N, device=keys.device, dtype=torch.float32)  # (B, K, N)
    _score_fwd[lambda meta: (B, triton.cdiv(K * N, meta["BLOCK_R"]))](
        keys, q, w, out, B, K, N, A, keys.stride(0), keys.stride(1), q.stride(0), q.stride(1),
        out.stride(0), out.stride(1), FAST=FAST_TANH)
    return out


@additive_score.register_fake
def _(keys: Tensor, q: Tensor, w: Tensor) -> Tensor:
    return keys.new_empty(keys.size(0), q.size(1), keys.size(1), dtype=torch.float32)


def attention_score(keys: Tensor, q: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """:func:`captionkit.models.attention.additive_score` (same arguments: w (1, A), b (1,))
    through the kernel: (B, K, N)."""
    e = additive_score(keys, q, w.reshape(-1))  # (B, K, N)
    return e if b is None else e + b


def _splits(B: int, N: int) -> int:
    """Region splits of the score's backward. One program per (image, column block) walks all
    regions: below 16 images a batch that is fewer programs than an H100/H200 has
    multiprocessors (16 column blocks an image at A=512), so then each walks a share (4 shares
    at 7 images, the 32 captions of a batch) and a sum adds their query gradients."""
    return max(1, min(triton.cdiv(N, 32), 32 // B))


@torch.library.custom_op("captionkit::additive_score_backward", mutates_args=())
def additive_score_backward(de: Tensor, keys: Tensor, q: Tensor,
                            w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (keys, q, w) of :func:`additive_score` given d scores (B, K, N)."""
    de, keys, q, w = de.float().contiguous(), keys.contiguous(), q.contiguous(), w.contiguous()
    B, N, A = keys.shape
    K = q.size(1)
    splits = _splits(B, N)
    dkeys = torch.empty_like(keys)  # (B, N, A)
    dq = torch.empty_like(q) if splits == 1 else q.new_empty(splits, B, K, A)  # or per split
    dw = torch.empty(splits * B, A, device=keys.device, dtype=torch.float32)  # summed below
    _score_bwd[lambda meta: (B, triton.cdiv(A, meta["BLOCK_A"]), splits)](
        de, keys, q, w, dkeys, dq, dw, B, K, N, A, triton.cdiv(N, splits), de.stride(0),
        de.stride(1), keys.stride(0), keys.stride(1), q.stride(0), q.stride(1),
        0 if splits == 1 else dq.stride(0), dq.stride(-3), dq.stride(-2),
        KP=triton.next_power_of_2(K), FAST=FAST_TANH)
    dq = dq if splits == 1 else dq.sum(0)  # (B, K, A): one kernel (bf16 summed in fp32)
    return dkeys, dq, dw.sum(0).to(w.dtype)


@additive_score_backward.register_fake
def _(de: Tensor, keys: Tensor, q: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(keys), torch.empty_like(q), torch.empty_like(w)


def _setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad: Tensor):
    return additive_score_backward(grad, *ctx.saved_tensors)


additive_score.register_autograd(_backward, setup_context=_setup)


def _kp(k: int) -> int:
    return max(16, triton.next_power_of_2(k))  # tensor-core products want >= 16 rows


@torch.library.custom_op("captionkit::attention_context", mutates_args=())
def attention_context(alpha: Tensor, feats: Tensor) -> Tensor:
    """``alpha @ feats`` per image: alpha (B, K, N) (any float dtype, used in feats' dtype as
    the batched product would), feats (B, N, D) bf16/fp16 -> context (B, K, D) in feats'
    dtype, accumulated in fp32."""
    if alpha.dim() != 3 or feats.dim() != 3 or alpha.size(0) != feats.size(0) \
            or alpha.size(2) != feats.size(1):
        raise ValueError(f"attention_context wants alpha (B, K, N), feats (B, N, D); got "
                         f"{tuple(alpha.shape)}, {tuple(feats.shape)}")
    alpha, feats = alpha.contiguous(), feats.contiguous()
    B, N, D = feats.shape
    K = alpha.size(1)
    out = feats.new_empty(B, K, D)  # (B, K, D)
    _context_fwd[lambda meta: (B, triton.cdiv(D, meta["BLOCK_D"]))](
        alpha, feats, out, B, K, N, D, alpha.stride(0), alpha.stride(1), feats.stride(0),
        feats.stride(1), out.stride(0), out.stride(1), KP=_kp(K), FAST=FAST_TANH)
    return out


@attention_context.register_fake
def _(alpha: Tensor, feats: Tensor) -> Tensor:
    return feats.new_empty(feats.size(0), alpha.size(1), feats.size(2))


@torch.library.custom_op("captionkit::attention_context_backward", mutates_args=())
def attention_context_backward(dctx: Tensor, alpha: Tensor, feats: Tensor,
                               feats_grad: bool) -> tuple[Tensor, Tensor]:
    """Gradients (alpha in fp32, feats or an empty tensor) of :func:`attention_context`."""
    dctx, feats = dctx.contiguous(), feats.contiguous()
    B, N, D = feats.shape
    K = alpha.size(1)
    dalpha = torch.empty(B, K, N, device=feats.device, dtype=torch.float32)  # (B, K, N)
    _context_bwd[lambda meta: (B, triton.cdiv(N, meta["BLOCK_N"]))](
        dctx, feats, dalpha, B, K, N, D, dctx.stride(0), dctx.stride(1), feats.stride(0),
        feats.stride(1), dalpha.stride(0), dalpha.stride(1), KP=_kp(K), FAST=FAST_TANH)
    dfeats = (torch.bmm(alpha.to(feats.dtype).transpose(1, 2), dctx) if feats_grad
              else feats.new_empty(0))  # (B, N, D): only when training the encoder
    return dalpha, dfeats


@attention_context_backward.register_fake
def _(dctx: Tensor, alpha: Tensor, feats: Tensor, feats_grad: bool) -> tuple[Tensor, Tensor]:
    dalpha = alpha.new_empty(alpha.shape, dtype=torch.float32)
    return dalpha, (torch.empty_like(feats) if feats_grad else feats.new_empty(0))


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)
    ctx.alpha_dtype = inputs[0].dtype


def _backward_context(ctx, grad: Tensor):
    alpha, feats = ctx.saved_tensors
    dalpha, dfeats = attention_context_backward(grad, alpha, feats, ctx.needs_input_grad[1])
    return dalpha.to(ctx.alpha_dtype), (dfeats if ctx.needs_input_grad[1] else None)


attention_context.register_autograd(_backward_context, setup_context=_setup_context)
