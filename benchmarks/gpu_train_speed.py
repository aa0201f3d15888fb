"""GPU decoder-training speed: captions/s, tokens/s, achieved TFLOP/s and peak memory.

    python benchmarks/gpu_train_speed.py                 # on a CUDA machine
    python benchmarks/gpu_train_speed.py --quick         # tiny sizes, any device (smoke test)

The workload is the one the field's most-used PyTorch implementation is measured on: a 512-d
LSTM with 512-d attention and embedding, a 9,490-word vocabulary, 14x14x2048 grid features
already on the device, 5 captions per image with COCO-like lengths (words ~ N(10.5, 2.4)
rounded, clipped to 6..25: COCO train's mean is 10.5 words), Adam, gradient clipping, SAT's
attention penalty. Batches are counted in captions (C captions = ceil(C/5) images).

Rows, for each batch size (same batches for every row):
  reference fp32   captionkit's decoder.forward + caption_loss + update, fp32 (as before)
  reference bf16   the same under bf16 autocast (captionkit's path before this benchmark)
  fast eager       captionkit.train.gpu.step.FastTrainStep: grouped by image, hoisted projections
  fast compiled    + torch.compile of the per-time-step function
  fast graphed     + the whole update captured as a CUDA graph
  fast score-kernel  + the attention score forward and backward as Triton kernels
  fast kernel      + the attention context (alpha @ feats) forward and backward as Triton
                   kernels too (captionkit.train.gpu.kernels): what ``captionkit train`` runs
                   on CUDA (train.fast_path=auto)
  fast hoisted     + the context's product into the gates hoisted out of the recurrence
                   (each image's features multiplied once, ``hoist_max_images``): fewer,
                   larger products, for small batches; it computes ~2.3x that product's
                   FLOPs, counted below as the model's (not what this variant executes)
  fast hoisted+k   the same with the Triton attention kernels at every batch size (by
                   default only from 16 images a batch: ``kernel_min_images``)
and a last "best" row: the kernel step at ``--best`` captions with length-bucketed batches.

FLOP count (stated, not measured): multiply-adds x 2 for the matrix products, per real
(non-pad) caption step: h -> attention query (H*A), gate (H), recurrent term (H*4H); context ->
gates (D*4H); embedding -> gates (E*4H); output projections (H*E + D*E); vocabulary (E*V);
attention score (N*A) and context (N*D). Per image: the key projection (N*D*A) and the initial
h, c (2*D*H). Training = 3 x forward. At these sizes that is 26.5 MFLOP per caption step and
415 MFLOP per image: with 11.5 steps per caption and the image's work shared by its 5
captions, ~1.16 GFLOP per caption (2.15 GFLOP if every caption recomputed its image's keys).
Padding steps are computed but not counted.

Each figure is the median over ``--repeats`` timed runs of ``--steps`` updates (CUDA events,
after warm-up and compilation). Also: beam search (k=3, bf16 decoder) images/s over a
5,000-image feature set. Ends with ``best_captions_per_s=``, ``b32_captions_per_s=`` and
``coco_epoch_seconds=`` (414,113 COCO train captions at the best rate).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import time
from dataclasses import dataclass

import torch

from captionkit.config import DecoderConfig, TrainConfig
from captionkit.data.dataset import collate
from captionkit.infer.decoding import beam_search
from captionkit.models.decoders import build_decoder
from captionkit.models.precision import autocast, inference_decoder
from captionkit.train.gpu.grouped import group_captions
from captionkit.train.gpu.step import FastTrainStep
from captionkit.train.losses import caption_loss
from captionkit.train.optim import build_optimizer, update

COCO_TRAIN_CAPTIONS = 414_113


@dataclass(frozen=True)
class Sizes:
    vocab: int = 9490
    grid: int = 14
    feat: int = 2048
    dim: int = 512
    per_image: int = 5


class Model(torch.nn.Module):
    """The decoder plus an empty frozen encoder: what build_optimizer expects."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.decoder, self.encoder = decoder, torch.nn.Identity()


def make_batches(s: Sizes, captions: int, count: int, seed: int, bucket: bool,
                 device: torch.device) -> list[dict]:
    """``count`` batches of ``captions`` captions (COCO-like lengths), features on device."""
    g = torch.Generator().manual_seed(seed)
    images = math.ceil(captions / s.per_image)
    pool = []
    for _ in range(count * images):
        words = (torch.randn(s.per_image, generator=g) * 2.4 + 10.5).round().clamp(6, 25)
        caps = [[1] + torch.randint(4, s.vocab, (int(n),), generator=g).tolist() + [2]
                for n in words]
        pool.append(caps)
    if bucket:  # like LengthBucketSampler: similar lengths share a batch
        pool.sort(key=lambda cs: max(map(len, cs)))
    batches = []
    for b in range(count):
        caps = pool[b * images:(b + 1) * images]
        flat = [c for cs in caps for c in cs][:captions]
        items = [(torch.zeros(1), [], i) for i in range(images)]
        for j, c in enumerate(flat):
            items[j // s.per_image][1].append(c)
        cb = collate(items, "features")  # only its tokens are used
        feats = torch.randn(images, s.grid * s.grid, s.feat, generator=g)
        batches.append({"feats": feats.to(device), "tokens": cb.tokens.to(device),
                        "index": cb.image_index.to(device),
                        "grouped": group_captions(cb.tokens, cb.image_index, images,
                                                  s.per_image).to(device),
                        "steps": sum(len(c) - 1 for c in flat), "captions": len(flat),
                        "images": images})
    return batches


def flops(s: Sizes, b: dict) -> float:
    """Training FLOPs of one batch by the count in the module docstring."""
    n, d, h = s.grid * s.grid, s.feat, s.dim
    per_step = 2 * (h * h + h + 4 * h * h + 4 * d * h + 4 * h * h + h * h + d * h + h * s.vocab
                    + n * h + n * d)
    per_image = 2 * (n * d * h + 2 * d * h)
    return 3.0 * (b["steps"] * per_step + b["images"] * per_image)


def make_model(s: Sizes, device: torch.device) -> Model:
    torch.manual_seed(0)
    cfg = DecoderConfig(name="lstm", embed_dim=s.dim, hidden_dim=s.dim, attention_dim=s.dim,
                        dropout=0.5)
    return Model(build_decoder(cfg, s.vocab, s.feat)).to(device)


def reference_runner(s: Sizes, device: torch.device, amp: bool):
    model = make_model(s, device)
    cfg = TrainConfig(lr=4e-4, grad_clip=5.0, amp=amp)
    opt = build_optimizer(model, cfg)

    def run(b: dict) -> None:
        with autocast(amp, device):
            logits, alphas = model.decoder(b["feats"], b["tokens"][:, :-1], b["index"])
        loss, _ = caption_loss(logits.float(), alphas.float(), b["tokens"][:, 1:], 0, 1.0)
        update(model, opt, loss, cfg, 0)
    return run


def fast_runner(s: Sizes, device: torch.device, compile: bool, graphs: bool,
                mode: str | None = None, kernel: bool = False, context: bool = True,
                hoist: bool = False, min_images: int = 16):
    model = make_model(s, device)
    cfg = TrainConfig(lr=4e-4, grad_clip=5.0, amp=True)
    step = FastTrainStep(model, build_optimizer(model, cfg, fused=True), cfg, compile=compile,
                         graphs=graphs, compile_mode=mode, kernel=kernel,
                         kernel_context=context, hoist_max_images=1 << 30 if hoist else 0,
                         kernel_min_images=min_images)
    return lambda b: step(b["feats"], b["grouped"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_runner(run, batches: list[dict], steps: int, repeats: int,
                device: torch.device) -> tuple[float, float]:
    """(median seconds per update, peak MiB) over ``repeats`` runs of ``steps`` updates."""
    for b in batches:  # warm-up: compilation and one CUDA graph per batch shape
        run(b)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        for i in range(steps):
            run(batches[i % len(batches)])
        if device.type == "cuda":
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000 / steps)
        else:
            times.append((time.perf_counter() - t0) / steps)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return statistics.median(times), peak


def beam_rate(s: Sizes, device: torch.device, images: int, batch: int) -> float:
    """Beam-3 images/s over ``images`` random feature grids with the bf16 decoder."""
    dec = inference_decoder(make_model(s, device).decoder.eval(), torch.bfloat16
                            if device.type == "cuda" else torch.float32)
    dtype = next(dec.parameters()).dtype
    feats = torch.randn(images, s.grid * s.grid, s.feat, device=device, dtype=dtype)
    with torch.no_grad():
        beam_search(dec, feats[:batch], start_id=1, end_id=2, beam_size=3, max_len=20)
        sync(device)
        t0 = time.perf_counter()
        for i in range(0, images, batch):
            beam_search(dec, feats[i:i + batch], start_id=1, end_id=2, beam_size=3, max_len=20)
        sync(device)
    return images / (time.perf_counter() - t0)


def profile(s: Sizes, device: torch.device, captions: int, variant: str) -> None:
    """Where the compiled (not graphed) step's GPU time goes: the top kernels."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batches = make_batches(s, captions, 2, seed=1, bucket=True, device=device)
    run = fast_runner(s, device, True, False, kernel=variant != "compiled",
                      hoist=variant.startswith("hoisted"),
                      min_images=1 if variant == "hoisted+k" else 16)
    for b in batches:
        run(b)
    sync(device)
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for b in batches * 2:
            run(b)
        sync(device)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="32,256,1024", help="captions per batch")
    ap.add_argument("--best", type=int, default=5120, help="captions per batch, best row")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batches", type=int, default=4,
                    help="distinct batches (shapes) cycled through: 1 for max-autotune runs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants",
                    default="ref32,ref16,eager,compiled,graphed,score,kernel,hoisted")
    ap.add_argument("--best-variant", default="kernel", help="variant(s) of the best row")
    ap.add_argument("--beam-images", type=int, default=5000)
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--compile-mode", help="torch.compile mode of the graphed step, e.g. "
                    "max-autotune-no-cudagraphs")
    ap.add_argument("--profile", action="store_true", help="CUDA kernel table, compiled step")
    ap.add_argument("--profile-at", help="captions per batch of the profiles (default: --best)")
    ap.add_argument("--profile-variant", default="kernel",
                    choices=["compiled", "kernel", "hoisted", "hoisted+k"],
                    help="the step the profiles run")
    return ap.parse_args()


TUNED = ("graphed", "score", "kernel", "hoisted", "hoisted+k")  # take --compile-mode


def make_runners(s: Sizes, device: torch.device, mode: str | None) -> dict:
    """Variant name -> (label, a function that builds its runner). Off the GPU the compiled
    and graphed variants run eagerly (the smoke test's path)."""
    gpu = device.type == "cuda"
    fast = functools.partial(fast_runner, s, device, gpu, gpu, mode, kernel=gpu)
    return {
        "ref32": ("reference fp32", lambda: reference_runner(s, device, amp=False)),
        "ref16": ("reference bf16", lambda: reference_runner(s, device, amp=True)),
        "eager": ("fast eager", lambda: fast_runner(s, device, False, False)),
        "compiled": ("fast compiled", lambda: fast_runner(s, device, gpu, False)),
        "graphed": ("fast graphed", lambda: fast_runner(s, device, gpu, gpu, mode)),
        "score": ("fast score-kernel", lambda: fast(context=False)),
        "kernel": ("fast kernel", lambda: fast()),
        "hoisted": ("fast hoisted", lambda: fast(hoist=True)),
        "hoisted+k": ("fast hoisted+k", lambda: fast(hoist=True, min_images=1)),
    }


def measure(s: Sizes, device: torch.device, args: argparse.Namespace) -> list[dict]:
    """One row per (batch size, variant) of the plan; a failing row is reported and skipped."""
    runners, rows = make_runners(s, device, args.compile_mode), []
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    plan = [(c, v, False) for c in sizes for v in args.variants.split(",")]
    plan += [(args.best, v, True) for v in args.best_variant.split(",")] if args.best else []
    for captions, variant, bucket in plan:
        batches = make_batches(s, captions, args.batches, seed=captions, bucket=bucket,
                               device=device)
        label, make = runners[variant]
        t0 = time.perf_counter()
        try:
            sec, peak = time_runner(make(), batches, args.steps, args.repeats, device)
        except Exception as e:  # report the row and go on with the others
            print(f"batch {captions} {label}: FAILED {type(e).__name__}: {e}", flush=True)
            continue
        label += f" {args.compile_mode}" if variant in TUNED and args.compile_mode else ""
        rows.append({"batch": captions, "variant": label + (" bucketed" if bucket else ""),
                     "captions_per_s": statistics.mean(b["captions"] for b in batches) / sec,
                     "tokens_per_s": statistics.mean(b["steps"] for b in batches) / sec,
                     "tflops": statistics.mean(flops(s, b) for b in batches) / sec / 1e12,
                     "peak_mib": peak, "wall_s": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
        del batches
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def report(rows: list[dict], beam: float, beam_images: int) -> None:
    """The table, then the headline key=value lines."""
    print(f"\n{'batch':>6} {'variant':<24} {'captions/s':>11} {'tokens/s':>11} {'TFLOP/s':>8} "
          f"{'peak MiB':>9}")
    for r in rows:
        print(f"{r['batch']:>6} {r['variant']:<24} {r['captions_per_s']:>11.0f} "
              f"{r['tokens_per_s']:>11.0f} {r['tflops']:>8.1f} {r['peak_mib']:>9.0f}")
    print(f"beam search k=3, bf16 decoder, {beam_images} images: {beam:.0f} images/s")
    best = max(r["captions_per_s"] for r in rows)
    b32 = max((r["captions_per_s"] for r in rows if r["batch"] == 32), default=float("nan"))
    print(f"best_captions_per_s={best:.0f}")
    print(f"b32_captions_per_s={b32:.0f}")
    print(f"coco_epoch_seconds={COCO_TRAIN_CAPTIONS / best:.2f}")
    print(f"beam3_images_per_s={beam:.0f}")


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch._dynamo.config.recompile_limit = 64  # one compiled step per batch shape and variant
    s = Sizes(vocab=300, grid=3, feat=32, dim=16) if args.quick else Sizes()
    on_gpu = device.type == "cuda"
    name = torch.cuda.get_device_name() if on_gpu else "CPU"
    print(f"device: {name}, torch {torch.__version__}; vocab {s.vocab}, grid {s.grid}x{s.grid}"
          f"x{s.feat}, {s.dim}-d; medians of {args.repeats} x {args.steps} updates")
    rows = measure(s, device, args)
    if args.profile and on_gpu:
        for captions in (args.profile_at or str(args.best)).split(","):
            print(f"profile, {captions} captions a batch:")
            profile(s, device, int(captions), args.profile_variant)
    beam_images = args.beam_images if on_gpu else 64
    beam = beam_rate(s, device, beam_images, 500 if on_gpu else 32)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "rows": rows, "beam3_images_per_s": beam}, f, indent=1)
    report(rows, beam, beam_images)


if __name__ == "__main__":
    main()
