"""Bigger grids: feature-extraction speed and cache size of an encoder at several image sizes.

    OMP_NUM_THREADS=1 python benchmarks/grid_size.py                  # the defaults below
    python benchmarks/grid_size.py --rows efficientnet_lite1:240,320 --images 64

Each row builds the encoder at ``encoder.image_size`` = the size (random weights: the speed is
the same as with ImageNet's) and runs the hot loop of ``captionkit extract-features``
(:func:`captionkit.data.features.extract_features`) over ``--images`` images: decoding and
resizing to the size in ``--workers`` processes, the encoder through
:func:`~captionkit.data.features.fast_inference` (channels-last, frozen TorchScript trace),
features to float16. The images are the first ones of ``--data-dir`` (``../shared/flickr8k``
when present; its photos are 224x224 copies, so the larger sizes upsample them: same speed, no
more detail) or generated 500x375 JPEGs.

Images/s (steady) counts from the end of the first batch to the end of the last, leaving out
the start-up (worker processes, tracing and the trace's first optimising calls, which cost a
few batches); "incl. start-up" is the whole run, trace included. Cache bytes per image are
N x D x the cache's dtype (``encoder_key(...)["dtype"]``, float16: what ``features.f16`` holds
per image); fp32 is what one image's features take in memory once read (``FeatureStore.get``
returns float32). Rows: ``NAME:SIZE,SIZE,...``; the default is Lite0 at 224 (native), 288, 320,
384 and Lite2 at 260 (native), 384.

Ends with ``<short>_<size>_images_per_s=`` lines, one a row (``lite0_224_images_per_s=``), then
``<short>_<size>_cache_bytes_per_image=`` lines.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from captionkit.config import EncoderConfig
from captionkit.data.features import encoder_key, fast_inference
from captionkit.data.images import Preprocess, load_image
from captionkit.models.encoders import ENCODERS, build_encoder

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROWS = ["efficientnet_lite0:224,288,320,384", "efficientnet_lite2:260,384"]


def parse_rows(specs: list[str]) -> list[tuple[str, int]]:
    """``["lite0:224,320", ...]`` -> ``[("efficientnet_lite0", 224), ...]`` (``lite0`` is short
    for ``efficientnet_lite0``)."""
    rows = []
    for spec in specs:
        name, _, sizes = spec.partition(":")
        if name not in ENCODERS and f"efficientnet_{name}" in ENCODERS:
            name = f"efficientnet_{name}"
        ENCODERS.get(name)  # an unknown name lists the encoders
        rows += [(name, int(s)) for s in sizes.split(",") if s]
    return rows


def short(name: str) -> str:
    """The key prefix of an encoder: ``efficientnet_lite0`` -> ``lite0``."""
    return name.removeprefix("efficientnet_")


class ImageFiles(Dataset):
    """Image files decoded and preprocessed (in the loader's workers), as extraction does."""

    def __init__(self, paths: list[Path], pre: Preprocess) -> None:
        self.paths, self.pre = paths, pre

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.pre(load_image(self.paths[i]))  # (3, S, S)


def image_files(data_dir: Path | None, n: int, folder: Path) -> tuple[list[Path], str]:
    """The first ``n`` JPEGs of a Flickr8k folder, else ``n`` generated 500x375 JPEGs."""
    images = sorted((data_dir / "Flicker8k_Dataset").glob("*.jpg"))[:n] if data_dir else []
    if len(images) == n:
        return images, f"{data_dir.name} (first {n})"
    rng = np.random.default_rng(0)
    images = [folder / f"{i}.jpg" for i in range(n)]
    for path in images:
        Image.fromarray(rng.integers(0, 255, (375, 500, 3), np.uint8)).save(path)
    return images, "generated 500x375 JPEGs"


def measure(name: str, size: int, paths: list[Path], args) -> dict:
    """One row: grid, regions, dim, images/s (steady and whole run), cache bytes per image."""
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(name=name, image_size=size, trainable=False)).eval()
    itemsize = np.dtype(encoder_key(enc)["dtype"]).itemsize  # what the cache stores
    loader = DataLoader(ImageFiles(paths, enc.preprocess), batch_size=args.batch_size,
                        num_workers=args.workers)
    t0 = time.perf_counter()
    run = fast_inference(enc, args.batch_size, args.device)
    ends = []
    with torch.inference_mode():
        for images in loader:  # (B, 3, S, S)
            feats = run(images).half().cpu()  # (B, N, D), as extract_features stores them
            ends.append(time.perf_counter())
    assert feats.shape[1:] == (enc.num_locations, enc.out_dim), feats.shape
    steady = (len(paths) - args.batch_size) / max(ends[-1] - ends[0], 1e-9)
    n, dim = enc.num_locations, enc.out_dim
    return {"name": name, "size": size, "grid": enc.grid, "regions": n, "dim": dim,
            "images_per_s": steady, "end_to_end": len(paths) / (ends[-1] - t0),
            "fp16": n * dim * itemsize, "fp32": n * dim * 4}


def print_table(results: list[dict]) -> None:
    """The rows as a Markdown table, speed also relative to each encoder's first row."""
    head = ["encoder", "image px", "grid", "regions N", "D", "images/s (steady)",
            "images/s (incl. start-up)", "vs first size", "cache KiB/image (fp16)",
            "fp32 KiB/image", "Flickr8k cache (8,091 images)"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    first: dict[str, float] = {}
    for r in results:
        base = first.setdefault(r["name"], r["images_per_s"])
        cells = [r["name"], str(r["size"]), f"{r['grid'][0]}x{r['grid'][1]}", str(r["regions"]),
                 str(r["dim"]), f"{r['images_per_s']:.1f}", f"{r['end_to_end']:.1f}",
                 f"{r['images_per_s'] / base:.2f}x", f"{r['fp16'] / 1024:.0f}",
                 f"{r['fp32'] / 1024:.0f}", f"{r['fp16'] * 8091 / 2**30:.2f} GiB"]
        print("| " + " | ".join(cells) + " |")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, help="NAME:SIZE,SIZE,... each")
    ap.add_argument("--images", type=int, default=200, help="images per row (N)")
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "flickr8k",
                    help="Flickr8k folder (generated images when it is absent)")
    ap.add_argument("--batch-size", type=int, default=20, help="images per batch (200 = 10)")
    ap.add_argument("--workers", type=int, default=1, help="image-decoding processes")
    ap.add_argument("--device", default="cpu")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    rows = parse_rows(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir if args.data_dir and args.data_dir.is_dir() else None
        n = max(args.images, 2 * args.batch_size)  # at least one batch after the first
        paths, source = image_files(data_dir, n, Path(tmp))
        print(f"machine: {platform.machine()} {platform.processor() or ''}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}, device "
              f"{args.device}; {n} images: {source}; batch {args.batch_size}, "
              f"{args.workers} decoding worker(s); random weights\n")
        results = [measure(name, size, paths, args) for name, size in rows]
    print_table(results)
    print()
    for key in ("images_per_s", "fp16"):
        suffix = "images_per_s" if key == "images_per_s" else "cache_bytes_per_image"
        for r in results:
            value = f"{r[key]:.1f}" if key == "images_per_s" else str(r[key])
            print(f"{short(r['name'])}_{r['size']}_{suffix}={value}")


if __name__ == "__main__":
    main()
