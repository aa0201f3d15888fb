"""The fast path's loss for the attention RNN decoders (``lstm``, ``gru``), made for GPUs.

It computes the loss that ``decoder(feats, tokens, image_index)`` followed by
:func:`captionkit.train.losses.caption_loss` computes (``tests/train/gpu/test_grouped.py``
checks the loss and every gradient against that reference, for every registered decoder that
declares the fast path). The maths is the decoder's own: its initial state, the attention's
functions, its input-weight split, its ``cell_update``, its deep output and output head, the
losses' coverage penalty; what is here is only how the work is organised for throughput:

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
  recurrence, one product over all steps (:class:`_LateGrad`), not one per step; for small
  batches the context's matmul can leave the recurrence altogether (``hoist``);
- every caption runs the batch's T steps and a mask drops the steps after its end, so no shape
  depends on the data and nothing waits for the host.

:class:`captionkit.train.gpu.step.FastTrainStep` turns this into an optimizer update: compiled,
captured as a CUDA graph, with the Triton attention kernels of
:mod:`captionkit.train.gpu.kernels`.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captionkit.models.attention import (
    additive_attend,
    additive_score,
    attention_context,
    attention_weights,
    fast_path_attention,
    gate_value,
)
from captionkit.models.decoders import fast_path_declared
from captionkit.train.losses import coverage_penalty


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


def grouped_tokens(batch, k: int, device: torch.device, multiple: int = 4) -> Tensor:
    """A collated batch's captions grouped to (B, k, T) on ``device``, T rounded up to
    ``multiple`` (few distinct shapes, so few CUDA graphs)."""
    t = -(-batch.tokens.size(1) // multiple) * multiple
    tokens = group_captions(batch.tokens, batch.image_index, batch.num_images, k, t)
    return tokens.to(device, non_blocking=True)  # (B, k, T)


def _attend(feats: Tensor, keys: Tensor, q: Tensor, gate: Tensor, w_score: Tensor,
            b_score: Tensor, w_c: Tensor | None, score=additive_score,
            context=attention_context) -> tuple[Tensor, Tensor, Tensor]:
    """The attention's term in the gates (B, K, G), what the step carries out (the gated
    context (B, K, D)) and alpha (B, K, N), for queries q (B, K, A) over one image's keys
    (B, N, A) and features (B, N, D), with the attention's own functions
    (:mod:`captionkit.models.attention`).

    With ``w_c`` None the context's product is hoisted: ``feats`` is then each image's
    ``feats @ w_cᵀ`` (B, N, G), computed once, and since the gate is one number per caption,
    ``w_c (sigmoid(gate) alpha @ f) = (sigmoid(gate) alpha) @ (f w_cᵀ)``; the gated weights
    (B, K, N) are carried out in place of the context (rebuilt after the recurrence)."""
    if w_c is None:
        alpha = attention_weights(keys, q, w_score, b_score, score)  # (B, K, N)
        weights = alpha * gate_value(gate)  # (B, K, N)
        return context(weights, feats), weights, alpha  # (B, K, G)
    ctx, alpha = additive_attend(feats, keys, q, gate, w_score, b_score, score, context)
    return F.linear(ctx, w_c), ctx, alpha


def _from_h(h: Tensor, w_h: Tensor, b_h: Tensor, probe: Tensor | None) -> Tensor:
    """The terms computed from h (B, K, H) -> (B, K, O), plus ``probe`` (zeros whose gradient
    is this product's output gradient: see :class:`_LateGrad`)."""
    z = F.linear(h, w_h, b_h)  # (B, K, O)
    return z if probe is None else z + probe


def step_for(decoder: nn.Module):
    """The fast path's step for ``decoder``: one recurrence for all captions with the
    decoder's own attention and gate maths (its ``cell_update``).

    ``step(feats, keys, xe, h, c, w_h, b_h, w_c, w_score, b_score, probe=None, score=...,
    context=...)``: xe (B, K, G) is the embedding's input term (with the input bias); w_h
    stacks the query, gate and recurrent layers (A + 1 + G outputs from h); returns h, c
    (B, K, H), the gated context (B, K, D) and alpha (B, K, N). ``probe`` (B, K, A+1+G) is added
    to the terms from h (zeros that carry their gradient out). ``w_c`` None: ``feats`` are the
    hoisted ``feats @ w_cᵀ`` and the gated attention weights come out in place of the context
    (see :func:`_attend`). ``score`` and ``context`` compute the attention
    (:func:`additive_score`, :func:`attention_context` or their Triton kernels)."""
    update = decoder.cell_update  # a plain function of tensors

    def step(feats, keys, xe, h, c, w_h, b_h, w_c, w_score, b_score, probe=None,
             score=additive_score, context=attention_context):
        a = keys.size(-1)
        q, gate, hh = _from_h(h, w_h, b_h, probe).split([a, 1, w_h.size(0) - a - 1], dim=-1)
        term, ctx, alpha = _attend(feats, keys, q, gate, w_score, b_score, w_c, score, context)
        h, c = update((xe + term).to(c.dtype), hh.to(c.dtype), h, c)  # (B, K, H)
        return h, c, ctx, alpha
    return step


class _LateGrad(torch.autograd.Function):
    """``y`` unchanged; its gradient g (T, B, K, O) is also the output gradient of a product
    that added its result to ``y`` at every time step, and becomes the gradient of that
    product's ``weight`` (and ``bias``), given the product's other inputs x (T, B, K, I) (put
    in ``inputs`` after the recurrence, before the backward) and ``spec``, the einsum from
    (g, x) to the weight's gradient:

    - a linear layer, weight (O, I): ``"...o,...i->oi"``, gᵀx over all steps and captions;
    - the hoisted context, each image's ``feats @ w_cᵀ`` (B, N, O) multiplied by the gated
      attention weights x (T, B, K, N): ``"tbko,tbkn->bno"``, xᵀg per image.

    Inside the recurrence the product runs on a detached weight, so its gradient is one
    product over all steps instead of a small product, a cast and an add at every step."""

    @staticmethod
    def forward(ctx, y: Tensor, weight: Tensor, bias: Tensor | None, inputs: list,
                spec: str) -> Tensor:
        ctx.inputs, ctx.spec = inputs, spec
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g: Tensor):
        x = ctx.inputs[0]  # (T, B, K, I)
        gw = torch.einsum(ctx.spec, g.to(x.dtype), x).to(ctx.dtypes[0])  # the weight's shape
        wide = torch.promote_types(g.dtype, torch.float32)  # bf16 gradients summed in fp32
        gb = (None if ctx.dtypes[1] is None
              else g.flatten(0, -2).sum(0, dtype=wide).to(ctx.dtypes[1]))  # (O,)
        return g, gw, gb, None, None


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose gradient is made contiguous here, once: the compiled step's backward
    wants contiguous gradients for its outputs, and slices of a permuted or broadcast gradient
    (the coverage penalty's, the rebuilt contexts') would each be copied, one copy a step."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        return g.contiguous()


def _compute_dtype(device: torch.device, default: torch.dtype) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return default


def _context_product(xe: Tensor, f: Tensor, w_c: Tensor, inputs: list,
                     hoist: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """(xe carrying w_c's late gradient, what the steps attend over, the step's w_c).
    Hoisted: each image's ``f @ w_cᵀ`` (B, N, G), whose gradient comes after the recurrence
    from the gated attention weights, and no w_c; else the features and w_c detached."""
    if hoist:
        source = F.linear(f, w_c)  # (B, N, G): the context's product, once per image
        xe = _LateGrad.apply(xe, source, None, inputs, "tbko,tbkn->bno")  # (T, B, K, G)
        return xe, source.detach(), None
    xe = _LateGrad.apply(xe, w_c, None, inputs, "...o,...i->oi")  # (T, B, K, G)
    return xe, f, w_c.detach().to(f.dtype)  # cast once


def _per_step(tensors: list[Tensor], steps: int, own_views: bool) -> list:
    """What each step gets of tensors every step uses: the tensor itself, or a view of its own
    (``own_views``), so that autograd stacks their gradients and sums them once instead of
    adding them up at every step (T gradients held until then)."""
    if own_views:
        return [t.expand(steps, *t.shape).unbind(0) for t in tensors]
    return [itertools.repeat(t, steps) for t in tensors]


def grouped_forward(decoder: nn.Module, feats: Tensor, tokens: Tensor, step=None,
                    hoist: bool = False) -> tuple[Tensor, Tensor]:
    """Teacher forcing over grouped inputs: feats (B, N, D), tokens (B, K, T) ->
    pre-vocabulary outputs (T, B, K, E) and alphas (T, B, K, N), time first. ``step``
    defaults to :func:`step_for` the decoder; pass a compiled one to fuse it. A step
    may return a fifth output, a copy of h for the output layer: compiled, the gradients of h
    from the next step and from the output layer are then added inside its backward, not by
    autograd in a kernel of its own.

    Time first, each step's input term is a contiguous slice taken with ``unbind``: its
    gradient is one stack at the end, not a full-size zero tensor plus an add at every step
    (what indexing ``xe[:, :, t]`` costs in the backward).

    ``hoist`` moves the context's product into the gates out of the recurrence: each image's
    features are multiplied by it once (``feats @ w_cᵀ``, N rows per image instead of K*T
    caption steps: ~2.3x the FLOPs at COCO's sizes, in one large product), and every step
    attends over those instead, one matrix product fewer in the forward and in the backward of
    each step; the contexts the output layer needs are rebuilt after the recurrence in one
    batched product. The gradients of the keys and of the score's weight and bias, which every
    step adds to, are summed once after the recurrence (each step gets its own view; T copies
    held until then) instead of by an addition at every step. Made for small batches, whose
    steps are bound by latency: ~30 small kernels each."""
    dec, att = decoder, decoder.attention
    B, K, T = tokens.shape
    dtype = _compute_dtype(feats.device, feats.dtype)
    keys, h, c = _initial_state(dec, feats, K, dtype)  # (B, N, A), (B, K, H) x 2
    emb = dec.embed(tokens.permute(2, 0, 1))  # (T, B, K, E)
    w_e, w_c, b_in = dec.input_weights()  # the cell's input split as the decoder concatenates
    xe = F.linear(emb, w_e, b_in)  # (T, B, K, G): the embedding's term, all steps at once
    w_h, b_h = _from_h_weights(dec)  # (A+1+G, H): query, gate and recurrent layers stacked
    f = feats.to(dtype)  # cast once, not at every step
    # the weights from h and from the context get their gradients after the recurrence: the
    # gates' gradient is xe's, the terms from h get zero probes (see _LateGrad)
    h_in, ctx_in = [], []  # each product's inputs at all steps, known after the loop
    xe, source, w_c = _context_product(xe, f, w_c, ctx_in, hoist)  # (T, B, K, G), ..
    probes = _LateGrad.apply(xe.new_zeros(T, B, K, w_h.size(0)), w_h, b_h, h_in,
                             "...o,...i->oi")  # (T, B, K, A+1+G)
    w_h, b_h = w_h.detach().to(dtype), b_h.detach().to(dtype)
    shared = _per_step([keys, *att.score_weights()], T, hoist)
    fn = step or step_for(dec)
    hs, ctxs, alphas = [h], [], []
    for x, p, k, w_s, b_s in zip(xe.unbind(0), probes.unbind(0), *shared, strict=True):
        h, c, ctx, alpha, *h_out = fn(source, k, x, h, c, w_h, b_h, w_c, w_s, b_s, p)
        hs.append(h_out[0] if h_out else h)  # x, p, h: (B, K, *)
        ctxs.append(ctx)
        alphas.append(alpha)
    h_all = torch.stack(hs)  # (T+1, B, K, H)
    ctx_all = _ContiguousGrad.apply(torch.stack(ctxs))  # (T, B, K, D or N)
    h_in.append(h_all[:-1].detach().to(dtype))  # detached: a graph reaching the Function's
    ctx_in.append(ctx_all.detach().to(dtype))  # context from its own inputs would never be freed
    if hoist:  # the gated contexts from the gated weights, all steps in one product per image
        ctx_all = torch.einsum("tbkn,bnd->tbkd", ctx_all.to(dtype), f)  # (T, B, K, D)
    out = dec.deep_output(emb, h_all[1:], ctx_all)  # (T, B, K, E)
    return out, _ContiguousGrad.apply(torch.stack(alphas))  # (T, B, K, E), (T, B, K, N)


def _initial_state(decoder: nn.Module, feats: Tensor, k: int,
                   dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """The attention keys (B, N, A) in the compute dtype and the decoder's initial (h, c)
    repeated for the K captions of each image, (B, K, H), in the cell state's dtype (fp32
    under autocast); contiguous, so one compiled step serves every time step."""
    keys = decoder.attention.project(feats).to(dtype)  # (B, N, A): once per image
    state = torch.float32 if dtype != feats.dtype else feats.dtype
    h, c = decoder.initial_hidden(feats)  # (B, H)
    return (keys, h.to(state).unsqueeze(1).repeat(1, k, 1),
            c.to(state).unsqueeze(1).repeat(1, k, 1))


def _from_h_weights(decoder: nn.Module) -> tuple[Tensor, Tensor]:
    """The layers that read the hidden state (the attention's query and gate, then the cell's
    recurrent terms), stacked into one product: weight (A+1+G, H), bias (A+1+G,)."""
    layers = [(m.weight, m.bias) for m in decoder.attention.query_layers()]
    layers.append(decoder.recurrent_layer())
    return torch.cat([w for w, _ in layers]), torch.cat([b for _, b in layers])


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
                 head=vocab_loss, hoist: bool = False) -> tuple[Tensor, Tensor]:
    """:func:`captionkit.train.losses.caption_loss` of the decoder on grouped captions tokens
    (B, K, T) (all-pad rows are absent captions): (total loss, cross-entropy), both divided by
    this batch's (target tokens, captions) or by ``counts``. ``head`` is :func:`vocab_loss`
    or a compiled copy; ``hoist``: see :func:`grouped_forward`."""
    inputs, targets = tokens[..., :-1], tokens[..., 1:].permute(2, 0, 1)  # (B,K,T-1), (T-1,B,K)
    out, alphas = grouped_forward(decoder, feats, inputs, step, hoist)  # (T-1, B, K, E), (.., N)
    dropout, layer = decoder.output_head()
    ce_sum = head(dropout(out), layer.weight, layer.bias, targets, pad_id)
    mask = targets.ne(pad_id)  # (T-1, B, K)
    present = tokens[..., 0].ne(pad_id)  # (B, K) real captions
    ntok, ncap = counts if counts is not None else (mask.sum(), present.sum())
    ce = ce_sum / ntok
    if alpha_c <= 0:
        return ce, ce
    penalty = coverage_penalty(alphas, mask, 0, present) / (ncap * alphas.size(-1))
    return ce + alpha_c * penalty, ce


def supports(decoder: nn.Module) -> bool:
    """Whether the fast step can train ``decoder``: its class and its attention mechanism's
    class declare that the fast path computes their maths
    (:func:`captionkit.models.decoders.fast_path_declared`,
    :func:`captionkit.models.attention.fast_path_attention`; never inherited, so a subclass
    that changes the maths is not trained with the parent's)."""
    return fast_path_declared(decoder) and fast_path_attention(decoder.attention)
