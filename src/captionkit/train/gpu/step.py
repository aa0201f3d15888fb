"""The fast path's optimizer update: :class:`FastTrainStep`, made for GPUs.

One update of an attention RNN decoder on a grouped batch, with the loss of
:func:`captionkit.train.gpu.grouped.grouped_loss`:

- the per-time-step function compiles (``torch.compile``) and a whole update (forward,
  backward, clipping, Adam) is captured once per batch shape as a CUDA graph and replayed:
  nothing waits for the host;
- on CUDA the attention's score and context run as Triton kernels
  (:mod:`captionkit.train.gpu.kernels`, ``kernel=True``): compiled, the score's backward
  recomputes ``tanh`` over (captions x regions x A) in two reductions, and the context's
  batched product pads each image's 5 query rows to a full tile;
- a non-finite loss never reaches the weights: the update is skipped on the device (fused
  Adam's ``found_inf``) and the first such step is recorded for the caller to report.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor, nn

from captionkit.config import Config, TrainConfig
from captionkit.errors import CaptionKitError, NonFiniteLossError
from captionkit.models.attention import attention_context
from captionkit.models.precision import autocast
from captionkit.train.distributed import Dist
from captionkit.train.gpu.grouped import (
    grouped_loss,
    grouped_tokens,
    step_for,
    supports,
    vocab_loss,
)
from captionkit.train.stages import Stage


def kernel_available(device: torch.device) -> bool:
    """Whether the Triton attention kernel can run on ``device`` (CUDA with Triton)."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


def _with_kernels(step, min_images: int, use_context: bool = True):
    """``step`` with the Triton attention kernels for batches of at least ``min_images``
    images; the context kernel only for half-precision features (fp32 would run its products
    in TF32). Shapes and dtypes are static under torch.compile: one choice per compiled shape."""
    from captionkit.train.gpu import kernels  # imports Triton

    def fused_step(*args):
        if args[1].size(0) < min_images:
            return step(*args)
        half = use_context and args[0].dtype in (torch.bfloat16, torch.float16)
        return step(*args, score=kernels.attention_score,
                    context=kernels.attention_context if half else attention_context)
    return fused_step


def _with_h_copy(step):
    """``step`` that also returns a copy of h, for the output layer (see
    :func:`captionkit.train.gpu.grouped.grouped_forward`): one autograd addition fewer a step."""

    def step_and_copy(*args, **kwargs):
        h, c, ctx, alpha = step(*args, **kwargs)
        return h, c, ctx, alpha, h.clone()
    return step_and_copy


class FastTrainStep:
    """One optimizer update of ``model``'s decoder on a grouped batch, returning the device
    tensor (loss, ce, finite) without waiting for it.

    ``compile`` fuses the per-step function with torch.compile; ``graphs`` (CUDA) captures the
    whole update per batch shape as a CUDA graph (inputs are copied into static buffers and the
    graph is replayed). The optimizer must be fused Adam with a tensor learning rate
    (:func:`captionkit.train.optim.build_optimizer` with ``fused=True``), so a non-finite loss skips
    the update on the device. ``first_bad`` holds the first such step (-1 while none).
    ``kernel`` computes the attention score and context (forward and backward) with the
    Triton kernels of :mod:`captionkit.train.gpu.kernels` (CUDA only) for batches of at least
    ``kernel_min_images`` images; smaller ones are bound by launches, not by the score (at
    batch 32 captions the kernel measured 8% slower on an H200, at 256 17% faster).
    ``kernel_context=False`` keeps the context product in cuBLAS. ``hoist_max_images``:
    batches of at most that many images hoist the context's product out of the recurrence
    (see :func:`captionkit.train.gpu.grouped.grouped_forward`; 0, the default, never: at large
    batches it costs ~2.3x that product's FLOPs for nothing).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                 compile: bool = False, graphs: bool = False, pad_id: int = 0,
                 compile_mode: str | None = None, kernel: bool = False,
                 kernel_min_images: int = 16, kernel_context: bool = True,
                 hoist_max_images: int = 0) -> None:
        self.model, self.optimizer, self.cfg, self.pad_id = model, optimizer, cfg, pad_id
        self.hoist_max_images = hoist_max_images
        self.decoder = model.decoder
        self.step_fn = step_for(self.decoder)
        if kernel:
            self.step_fn = _with_kernels(self.step_fn, kernel_min_images, kernel_context)
        self.head = vocab_loss
        if compile:
            self.step_fn = torch.compile(_with_h_copy(self.step_fn), dynamic=False,
                                         mode=compile_mode)
            self.head = torch.compile(vocab_loss)  # lengths vary: dynamic after a recompile
        self.graphs = graphs
        self._graphs: dict[tuple, tuple] = {}
        self._pool = None  # one memory pool for all of this step's graphs (run one at a time)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.device = self.params[0].device
        for g in optimizer.param_groups:  # a loaded state dict may have made them floats
            if not isinstance(g["lr"], Tensor):
                g["lr"] = torch.tensor(float(g["lr"]), device=self.device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self.step_no = torch.zeros((), dtype=torch.long, device=self.device)

    def _update(self, feats: Tensor, tokens: Tensor) -> Tensor:
        with autocast(self.cfg.amp, self.device, cache=not self.graphs):
            loss, ce = grouped_loss(self.decoder, feats, tokens, self.cfg.alpha_c, self.pad_id,
                                    step=self.step_fn, head=self.head,
                                    hoist=feats.size(0) <= self.hoist_max_images)
        finite = torch.isfinite(loss)
        self.optimizer.found_inf = (~finite).float()  # fused Adam skips the step on device
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)
        bad = (~finite) & (self.first_bad < 0)
        self.first_bad.copy_(torch.where(bad, self.step_no, self.first_bad))
        self.step_no.add_(1)
        return torch.stack([loss.detach(), ce.detach(), finite.float()])

    def __call__(self, feats: Tensor, tokens: Tensor) -> Tensor:
        """Update on feats (B, N, D) and grouped tokens (B, K, T), both on the device."""
        if not self.graphs:
            return self._update(feats, tokens)
        key = (tuple(feats.shape), tuple(tokens.shape), feats.dtype)
        if key not in self._graphs:
            self._graphs[key] = self._capture(feats, tokens)
        graph, f_in, t_in, out = self._graphs[key]
        f_in.copy_(feats, non_blocking=True)
        t_in.copy_(tokens, non_blocking=True)
        graph.replay()
        return out.clone()

    def _capture(self, feats: Tensor, tokens: Tensor) -> tuple:
        """Warm up on a side stream, capture one update, then restore the weights and the
        optimizer state the warm-up changed (capture itself computes nothing)."""
        saved = _snapshot(self.params, self.optimizer, [self.first_bad, self.step_no])
        f_in, t_in = feats.clone(), tokens.clone()
        for p in self.params:  # every graph writes these same gradient tensors: never replace
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._update(f_in, t_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        self._pool = self._pool or torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._update(f_in, t_in)
        _restore(saved, self.params, self.optimizer, [self.first_bad, self.step_no])
        return graph, f_in, t_in, out


def _snapshot(params, optimizer, extra) -> dict:
    state = {id(p): {k: v.clone() for k, v in optimizer.state[p].items()
                     if isinstance(v, Tensor)} for p in params if p in optimizer.state}
    return {"params": [p.detach().clone() for p in params], "state": state,
            "extra": [t.clone() for t in extra]}


def _restore(saved: dict, params, optimizer, extra) -> None:
    with torch.no_grad():
        for p, v in zip(params, saved["params"], strict=True):
            p.copy_(v)
            p.grad.zero_()
        for p in params:
            before = saved["state"].get(id(p), {})
            for k, v in optimizer.state[p].items():
                if isinstance(v, Tensor):
                    v.copy_(before[k]) if k in before else v.zero_()
        for t, v in zip(extra, saved["extra"], strict=True):
            t.copy_(v)


def use_fast_path(cfg: Config, model: nn.Module, device: torch.device,
                  d: Dist | None = None) -> bool:
    """Whether cross-entropy training runs :class:`FastCrossEntropy` (``train.fast_path``:
    ``always``, ``never``, or ``auto`` = on CUDA when it applies: a decoder whose class
    declares the fast path (:func:`captionkit.train.gpu.grouped.supports`) over a frozen
    encoder, one process)."""
    mode = cfg.train.fast_path
    frozen = not cfg.encoder.trainable and cfg.encoder.finetune_blocks == 0
    ok = (cfg.train.stage == "xe" and supports(model.decoder) and frozen
          and not (d and d.active))
    if mode == "always" and not ok:
        raise CaptionKitError("train.fast_path=always needs cross-entropy training of a decoder "
                              "that declares the fast path (lstm, gru) over a frozen encoder "
                              "in one process")
    only_the_decoder = cfg.train.stage == "xe" and frozen and not (d and d.active)
    if (mode == "auto" and device.type == "cuda" and only_the_decoder
            and not supports(model.decoder)):
        print(f"train.fast_path=auto: {cfg.decoder.name} with {cfg.decoder.attention} attention "
              "trains on the reference path (the GPU fast path runs lstm/gru with additive "
              "attention)")
    return ok and (mode == "always" or (mode == "auto" and device.type == "cuda"))


def check_finite(fast: FastTrainStep) -> None:
    """Raise for the first update the fast step skipped on the device (a non-finite loss)."""
    bad = int(fast.first_bad)
    if bad >= 0:
        raise NonFiniteLossError(f"loss became non-finite at step {bad} (its update was "
                                 "skipped)", bad)


class FastCrossEntropy(Stage):
    """The cross-entropy stage through :class:`FastTrainStep` (compiled and graphed on CUDA):
    captions grouped by image (at most ``k`` each), the logs left on the device and read every
    100 steps, when a non-finite loss is also looked for (that update was skipped on the
    device)."""

    name = "xe"
    logs = ("loss", "ce")
    log_every = 100

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                 device: torch.device, pad_id: int, k: int) -> None:
        super().__init__(model, optimizer)
        on_gpu = device.type == "cuda"
        self.fast = FastTrainStep(model, optimizer, cfg, compile=on_gpu, graphs=on_gpu,
                                  pad_id=pad_id, kernel=kernel_available(device),
                                  hoist_max_images=cfg.fast_hoist_images,
                                  compile_mode=cfg.fast_compile_mode)
        self.device, self.k = device, k

    def start(self, step: int) -> None:
        super().start(step)
        self.fast.step_no.fill_(step)

    def step(self, batch) -> dict[str, Tensor]:
        tokens = grouped_tokens(batch, self.k, self.device)  # (B, k, T)
        if batch.features is not None:
            feats = batch.features.to(self.device, non_blocking=True)  # (B, N, D)
        else:  # pixels through the frozen encoder
            with torch.no_grad():
                feats = self.model.encode(batch.pixels.to(self.device, non_blocking=True))
        loss, ce, _ = self.fast(feats, tokens)
        return {"loss": loss, "ce": ce}

    def check(self) -> None:
        check_finite(self.fast)
