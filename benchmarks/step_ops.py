"""Operations one fast-path update dispatches outside its compiled regions, by variant.

    python benchmarks/step_ops.py                     # any machine, ~1 min on a CPU

On a GPU at batch 32 the update is bound by launches: each eager operation outside the
compiled step (autograd's gradient additions between steps, copies that make a gradient
contiguous, casts) is one small kernel of ~2-3 µs. Their number hardly depends on the device,
so this counts them where it runs: the update of :class:`captionkit.train.gpu.step.FastTrainStep`
with the step compiled (Inductor), 7 images x 5 captions (the 32-caption batch) x T steps,
under the torch profiler. Per variant: kernel-launching ATen operations (leaves that are not
views or allocations), gradient additions and copies among them, and the compiled regions
called (each is several fused kernels on a GPU: not counted here). On a CPU the totals include
a few CPU-only operations (scalar casts around the optimizer): compare variants and commits
on one machine, not machines. Ends with ``ops_per_update_<variant>=`` lines.
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile

from captionkit.config import TrainConfig
from captionkit.train.gpu.step import FastTrainStep
from captionkit.train.optim import build_optimizer
from gpu_train_speed import Sizes, make_model

VARIANTS = {"default": {}, "hoisted": {"hoist_max_images": 1 << 30}}


# operations that only make views or allocate: no kernel of their own
NO_KERNEL = {"view", "select", "slice", "t", "transpose", "permute", "expand", "unsqueeze",
             "squeeze", "unbind", "detach", "reshape", "_reshape_alias", "split",
             "split_with_sizes", "chunk", "as_strided", "alias", "view_as", "flatten", "narrow",
             "empty", "empty_strided", "empty_like", "lift_fresh", "_unsafe_view", "resolve_conj",
             "resolve_neg", "result_type", "is_nonzero", "item", "_local_scalar_dense"}


def count(options: dict, images: int, per_image: int, steps: int, dim: int) -> collections.Counter:
    """Kernel-launching ATen operations of one update (leaf operations that are not views or
    allocations), by name, after two warm-up updates; "compiled region": calls of Inductor's
    generated code (on a GPU each is several fused kernels, counted apart)."""
    s = Sizes(vocab=500, grid=7, feat=2 * dim, dim=dim)
    model = make_model(s, torch.device("cpu"))  # gpu_train_speed.py's LSTM, smaller
    train = TrainConfig(lr=1e-3, grad_clip=5.0)
    step = FastTrainStep(model, build_optimizer(model, train, fused=True), train, compile=True,
                         **options)
    feats = torch.randn(images, s.grid * s.grid, s.feat)  # (B, N, D)
    tokens = torch.randint(4, s.vocab, (images, per_image, steps + 1))  # (B, K, T+1)
    tokens[..., 0] = 1
    for _ in range(2):
        step(feats, tokens)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(feats, tokens)
    ops = collections.Counter()
    for e in prof.events():
        if e.name.startswith("## Call CompiledFxGraph"):
            ops["compiled region"] += 1
        leaf = not any(c.name.startswith("aten::") for c in e.cpu_children)
        if e.name.startswith("aten::") and leaf and e.name[6:] not in NO_KERNEL:
            ops[e.name] += 1
    return ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=16, help="time steps of the batch")
    ap.add_argument("--dim", type=int, default=64, help="model width (counts do not depend on it)")
    args = ap.parse_args()
    rows = {name: count(opts, 7, 5, args.steps, args.dim) for name, opts in VARIANTS.items()}
    print(f"one update, 7 images x 5 captions x {args.steps} steps, step compiled\n")
    print(f"{'variant':<10} {'kernel ops':>10} {'add/add_':>9} {'copy_':>6} {'compiled':>9}")
    for name, ops in rows.items():
        total = sum(v for k, v in ops.items() if k.startswith("aten::"))
        adds = ops["aten::add"] + ops["aten::add_"]
        print(f"{name:<10} {total:>10} {adds:>9} {ops['aten::copy_']:>6} "
              f"{ops['compiled region']:>9}")
    for name, ops in rows.items():
        print(f"ops_per_update_{name}={sum(v for k, v in ops.items() if k.startswith('aten::'))}")


if __name__ == "__main__":
    main()
