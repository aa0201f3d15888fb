"""A fast training step for the attention RNN decoders (``lstm``, ``gru``), made for GPUs.

It computes the loss that ``decoder(feats, tokens, image_index)`` followed by
:func:`captionkit.losses.caption_loss` computes (``tests/test_fastpath.py`` checks the loss and
every gradient against that reference), organised for throughput:

- captions are grouped by image, (B, K, T): each image's attention keys ``W_f f`` and its
  features are read once for its K captions (the score and the context ``alpha @ f`` broadcast
  over the captions of an image);
- the embedding half of the cell's input projection, both output projections and the
  vocabulary layer run for all time steps in a few large matrix products, outside the
  recurrence (time first, so each step's slice is contiguous and its gradient costs nothing
  per step); compiled, the vocabulary layer and its cross-entropy fuse, so fp32 logits are
  never stored;
- inside the recurrence: one matmul from ``h`` (attention query, gate and recurrent term
  together), the additive attention, a bmm for the context, one matmul from the context, and
  the cell's pointwise update; the two matmuls' weight gradients are computed once after the
  recurrence, one product over all steps (:class:`_LateWeightGrad`), not one per step;
- every caption runs the batch's T steps and a mask drops the steps after its end, so no shape
  depends on the data and nothing waits for the host: the step function compiles
  (``torch.compile``) and a whole update (forward, backward, clipping, Adam) is captured once
  per batch shape as a CUDA graph and replayed;
- on CUDA the attention's score and context run as Triton kernels
  (:mod:`captionkit.attention_kernel`, ``kernel=True``): compiled, the score's backward
  recomputes ``tanh`` over (captions x regions x A) in two reductions, and the context's
  batched product pads each image's 5 query rows to a full tile.

A non-finite loss never reaches the weights: the update is skipped on the device (fused Adam's
``found_inf``) and the first such step is recorded for the caller to report.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captionkit.config import TrainConfig
from captionkit.precision import autocast


def group_captions(tokens: Tensor, image_index: Tensor, num_images: int, k: int | None = None,
                   t: int | None = None, pad_id: int = 0) -> Tensor:
    """Captions (C, T) of ``image_index`` (C,) -> (num_images, K, T') grouped by image, padded
    with all-pad rows (images with fewer than K captions) and pad columns up to ``t``."""
    counts = torch.bincount(image_index, minlength=num_images)  # (B,)
    kk = int(counts.max()) if k is None else k
    tt = tokens.size(1) if t is None else t
    if int(counts.max()) > kk or tokens.size(1) > tt:
        raise ValueError(f"captions do not fit (K={kk}, T={tt}): an image has "
                         f"{int(counts.max())} captions of up to {tokens.size(1)} tokens")
    order = torch.argsort(image_index, stable=True)  # (C,) captions of image 0 first
    starts = counts.cumsum(0) - counts  # (B,)
    img = image_index[order]
    pos = torch.arange(len(order)) - starts[img]  # (C,) place of each caption in its image
    out = torch.full((num_images, kk, tt), pad_id, dtype=tokens.dtype)
    out[img, pos, : tokens.size(1)] = tokens[order]
    return out  # (B, K, T')


def grouped_inputs(batch, k: int, device: torch.device,
                   multiple: int = 4) -> tuple[Tensor, Tensor]:
    """A collated batch as the fast step's inputs on ``device``: images or features, and
    tokens grouped to (B, k, T) with T rounded up to ``multiple`` (few distinct shapes, so few
    CUDA graphs)."""
    t = -(-batch.tokens.size(1) // multiple) * multiple
    tokens = group_captions(batch.tokens, batch.image_index, batch.images.size(0), k, t)
    return (batch.images.to(device, non_blocking=True),
            tokens.to(device, non_blocking=True))  # (B, N, D) or (B, 3, H, W); (B, k, T)


def additive_score(keys: Tensor, q: Tensor, w: Tensor) -> Tensor:
    """``sum_a w[a] tanh(keys[b,n,a] + q[b,k,a])``: keys (B, N, A), q (B, K, A) -> (B, K, N).
    :func:`captionkit.attention_kernel.additive_score` is the same as one Triton kernel."""
    return (torch.tanh(keys.unsqueeze(1) + q.unsqueeze(2)) * w).sum(-1)  # (B, K, N)


def attention_context(alpha: Tensor, feats: Tensor) -> Tensor:
    """Each caption's context: alpha (B, K, N) @ feats (B, N, D) -> (B, K, D) in feats' dtype.
    :func:`captionkit.attention_kernel.attention_context` is the same as a Triton kernel."""
    return torch.bmm(alpha.to(feats.dtype), feats)  # (B, K, D)


def _attend(feats: Tensor, keys: Tensor, q: Tensor, gate: Tensor, w_score: Tensor,
            b_score: Tensor, score=additive_score,
            context=attention_context) -> tuple[Tensor, Tensor]:
    """Gated context (B, K, D) and weights (B, K, N) for queries q (B, K, A) over one image's
    keys (B, N, A) and features (B, N, D)."""
    e = score(keys, q, w_score) + b_score  # (B, K, N)
    alpha = torch.softmax(e, dim=-1)  # (B, K, N); fp32 under autocast
    ctx = context(alpha, feats)  # (B, K, D)
    return ctx * torch.sigmoid(gate), alpha


def _from_h(h: Tensor, w_h: Tensor, b_h: Tensor, probe: Tensor | None) -> Tensor:
    """The terms computed from h (B, K, H) -> (B, K, O), plus ``probe`` (zeros whose gradient
    is this product's output gradient: see :class:`_LateWeightGrad`)."""
    z = F.linear(h, w_h, b_h)  # (B, K, O)
    return z if probe is None else z + probe


def lstm_step(feats, keys, xe, h, c, w_h, b_h, w_c, w_score, b_score, probe=None,
              score=additive_score, context=attention_context):
    """One LSTM step for all captions: xe (B, K, 4H) is the embedding's input term (with the
    input bias); returns h, c (B, K, H), the gated context (B, K, D) and alpha (B, K, N).
    ``probe`` (B, K, A+1+4H) is added to the terms from h (zeros that carry their gradient
    out). ``score`` and ``context`` compute the attention (:func:`additive_score`,
    :func:`attention_context` or their Triton kernels)."""
    a, hid = keys.size(-1), h.size(-1)
    q, gate, hh = _from_h(h, w_h, b_h, probe).split([a, 1, 4 * hid], dim=-1)  # (B,K,A+1+4H)
    ctx, alpha = _attend(feats, keys, q, gate, w_score, b_score, score, context)
    gates = (xe + F.linear(ctx, w_c) + hh).to(c.dtype)  # (B, K, 4H)
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c, ctx, alpha


def gru_step(feats, keys, xe, h, c, w_h, b_h, w_c, w_score, b_score, probe=None,
             score=additive_score, context=attention_context):
    """One GRU step (same arguments as :func:`lstm_step`; ``c`` passes through)."""
    a, hid = keys.size(-1), h.size(-1)
    q, gate, hh = _from_h(h, w_h, b_h, probe).split([a, 1, 3 * hid], dim=-1)  # (B,K,A+1+3H)
    ctx, alpha = _attend(feats, keys, q, gate, w_score, b_score, score, context)
    xr, xz, xn = (xe + F.linear(ctx, w_c)).to(h.dtype).chunk(3, dim=-1)  # (B, K, H) each
    hr, hz, hn = hh.to(h.dtype).chunk(3, dim=-1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h, c, ctx, alpha


STEPS = {"lstm": lstm_step, "gru": gru_step}


class _LateWeightGrad(torch.autograd.Function):
    """``y`` unchanged; its gradient g (T, B, K, O) also becomes the gradient of a linear
    layer's ``weight`` (O, I) and ``bias`` whose output at every time step had ``y``'s slice
    added to it, given that layer's inputs x (T, B, K, I) (put in ``inputs`` after the
    recurrence, before the backward). Inside the recurrence the layer runs with its weight
    detached, so the weight gradient is one matrix product over all steps, gᵀ x, instead
    of a small product, a cast and an accumulation at every step."""

    @staticmethod
    def forward(ctx, y: Tensor, weight: Tensor, bias: Tensor | None, inputs: list) -> Tensor:
        ctx.inputs, ctx.dtypes = inputs, (weight.dtype, None if bias is None else bias.dtype)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g: Tensor):
        x = ctx.inputs[0]  # (T, B, K, I)
        g2 = g.flatten(0, -2)  # (T*B*K, O)
        gw = (g2.t().to(x.dtype) @ x.flatten(0, -2)).to(ctx.dtypes[0])  # (O, I)
        wide = torch.promote_types(g.dtype, torch.float32)  # bf16 gradients summed in fp32
        gb = None if ctx.dtypes[1] is None else g2.sum(0, dtype=wide).to(ctx.dtypes[1])
        return g, gw, gb, None


def _compute_dtype(device: torch.device, default: torch.dtype) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return default


def grouped_forward(decoder: nn.Module, feats: Tensor, tokens: Tensor,
                    step=None) -> tuple[Tensor, Tensor]:
    """Teacher forcing over grouped inputs: feats (B, N, D), tokens (B, K, T) ->
    pre-vocabulary outputs (T, B, K, E) and alphas (T, B, K, N), time first. ``step``
    defaults to the decoder's cell (:data:`STEPS`); pass a compiled one to fuse it.

    Time first, each step's input term is a contiguous slice taken with ``unbind``: its
    gradient is one stack at the end, not a full-size zero tensor plus an add at every step
    (what indexing ``xe[:, :, t]`` costs in the backward)."""
    dec, att, cell = decoder, decoder.attention, decoder.cell
    B, K, T = tokens.shape
    dtype = _compute_dtype(feats.device, feats.dtype)
    keys = att.project(feats).to(dtype)  # (B, N, A): once per image
    mean = feats.mean(dim=1)  # (B, D)
    state = torch.float32 if dtype != feats.dtype else feats.dtype  # the cell state's
    h = torch.tanh(dec.init_h(mean)).to(state).unsqueeze(1).repeat(1, K, 1)  # (B, K, H)
    c = (torch.tanh(dec.init_c(mean)).to(state).unsqueeze(1).repeat(1, K, 1)
         if dec.init_c is not None else torch.zeros_like(h))  # contiguous: one compiled step
    emb = dec.embed(tokens.permute(2, 0, 1))  # (T, B, K, E)
    e_dim = emb.size(-1)
    xe = F.linear(emb, cell.weight_ih[:, :e_dim], cell.bias_ih)  # (T, B, K, G): all steps
    w_h = torch.cat([att.hidden_proj.weight, att.gate.weight, cell.weight_hh])  # (A+1+G, H)
    b_h = torch.cat([att.hidden_proj.bias, att.gate.bias, cell.bias_hh])
    w_c = cell.weight_ih[:, e_dim:]  # (G, D)
    # the weights from h and from the context get their gradients after the recurrence: the
    # gates' gradient is xe's, the terms from h get zero probes (see _LateWeightGrad)
    h_in, ctx_in = [], []  # each layer's inputs at all steps, known after the loop
    xe = _LateWeightGrad.apply(xe, w_c, None, ctx_in)  # (T, B, K, G)
    probes = _LateWeightGrad.apply(xe.new_zeros(T, B, K, w_h.size(0)), w_h, b_h, h_in)
    w_h, b_h, w_c = (w.detach().to(dtype) for w in (w_h, b_h, w_c))  # cast once
    w_score = att.score.weight.view(-1)  # (A,)
    fn = step or STEPS[dec.cell_type]
    f = feats.to(dtype)  # cast once, not at every step
    hs, ctxs, alphas = [h], [], []
    for x, p in zip(xe.unbind(0), probes.unbind(0), strict=True):  # (B, K, G), (B, K, O)
        h, c, ctx, alpha = fn(f, keys, x, h, c, w_h, b_h, w_c, w_score, att.score.bias, p)
        hs.append(h)
        ctxs.append(ctx)
        alphas.append(alpha)
    h_all, ctx_all = torch.stack(hs), torch.stack(ctxs)  # (T+1, B, K, H), (T, B, K, D)
    h_in.append(h_all[:-1].detach().to(dtype))  # detached: a graph reaching the Function's
    ctx_in.append(ctx_all.detach())  # context from its own inputs would never be freed
    out = emb + dec.out_h(h_all[1:]) + dec.out_ctx(ctx_all)  # (T, B, K, E)
    return out, torch.stack(alphas)  # (T, B, K, E), (T, B, K, N)


def vocab_loss(x: Tensor, weight: Tensor, bias: Tensor, targets: Tensor,
               pad_id: int = 0) -> Tensor:
    """Summed cross-entropy of the vocabulary layer: x (..., E), targets (...) -> scalar;
    logits in the ambient (autocast) dtype, scored in fp32. Compiled, the fp32 logits are
    never stored: one kernel reads the half-precision logits for the log-sum-exp, one writes
    their gradient."""
    logits = F.linear(x, weight, bias)  # (..., V)
    wide = torch.promote_types(logits.dtype, torch.float32)  # bf16 logits scored in fp32
    return F.cross_entropy(logits.flatten(0, -2).to(wide), targets.flatten(),
                           ignore_index=pad_id, reduction="sum")


def grouped_loss(decoder: nn.Module, feats: Tensor, tokens: Tensor, alpha_c: float,
                 pad_id: int = 0, counts: tuple | None = None, step=None,
                 head=vocab_loss) -> tuple[Tensor, Tensor]:
    """:func:`captionkit.losses.caption_loss` of the decoder on grouped captions tokens
    (B, K, T) (all-pad rows are absent captions): (total loss, cross-entropy), both divided by
    this batch's (target tokens, captions) or by ``counts``. ``head`` is :func:`vocab_loss`
    or a compiled copy."""
    inputs, targets = tokens[..., :-1], tokens[..., 1:].permute(2, 0, 1)  # (B,K,T-1), (T-1,B,K)
    out, alphas = grouped_forward(decoder, feats, inputs, step)  # (T-1, B, K, E), (.., N)
    ce_sum = head(decoder.dropout(out), decoder.out.weight, decoder.out.bias, targets, pad_id)
    mask = targets.ne(pad_id)  # (T-1, B, K)
    present = tokens[..., 0].ne(pad_id)  # (B, K) real captions
    ntok, ncap = counts if counts is not None else (mask.sum(), present.sum())
    ce = ce_sum / ntok
    if alpha_c <= 0:
        return ce, ce
    coverage = (alphas * mask.unsqueeze(-1)).sum(dim=0)  # (B, K, N)
    penalty = (((1.0 - coverage) ** 2).sum(-1) * present).sum() / (ncap * alphas.size(-1))
    return ce + alpha_c * penalty, ce


def kernel_available(device: torch.device) -> bool:
    """Whether the Triton attention kernel can run on ``device`` (CUDA with Triton)."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


def _with_kernels(step, min_images: int, use_context: bool = True):
    """``step`` with the Triton attention kernels for batches of at least ``min_images``
    images; the context kernel only for half-precision features (fp32 would run its products
    in TF32). Shapes and dtypes are static under torch.compile: one choice per compiled shape."""
    from captionkit import attention_kernel as kernels  # imports Triton

    def fused_step(*args):
        if args[1].size(0) < min_images:
            return step(*args)
        half = use_context and args[0].dtype in (torch.bfloat16, torch.float16)
        return step(*args, score=kernels.additive_score,
                    context=kernels.attention_context if half else attention_context)
    return fused_step


def supports(decoder: nn.Module) -> bool:
    """Whether the fast step can train ``decoder`` (the attention RNN decoders)."""
    return getattr(decoder, "cell_type", None) in STEPS


class FastTrainStep:
    """One optimizer update of ``model``'s decoder on a grouped batch, returning the device
    tensor (loss, ce, finite) without waiting for it.

    ``compile`` fuses the per-step function with torch.compile; ``graphs`` (CUDA) captures the
    whole update per batch shape as a CUDA graph (inputs are copied into static buffers and the
    graph is replayed). The optimizer must be fused Adam with a tensor learning rate
    (:func:`captionkit.optim.build_optimizer` with ``fused=True``), so a non-finite loss skips
    the update on the device. ``first_bad`` holds the first such step (-1 while none).
    ``kernel`` computes the attention score and context (forward and backward) with the
    Triton kernels of :mod:`captionkit.attention_kernel` (CUDA only) for batches of at least
    ``kernel_min_images`` images; smaller ones are bound by launches, not by the score (at
    batch 32 captions the kernel measured 8% slower on an H200, at 256 17% faster).
    ``kernel_context=False`` keeps the context product in cuBLAS.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                 compile: bool = False, graphs: bool = False, pad_id: int = 0,
                 compile_mode: str | None = None, kernel: bool = False,
                 kernel_min_images: int = 16, kernel_context: bool = True) -> None:
        self.model, self.optimizer, self.cfg, self.pad_id = model, optimizer, cfg, pad_id
        self.decoder = model.decoder
        self.step_fn = STEPS[self.decoder.cell_type]
        if kernel:
            self.step_fn = _with_kernels(self.step_fn, kernel_min_images, kernel_context)
        self.head = vocab_loss
        if compile:
            self.step_fn = torch.compile(self.step_fn, dynamic=False, mode=compile_mode)
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
                                    step=self.step_fn, head=self.head)
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
