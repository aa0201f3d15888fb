"""Batch captioning throughput: ``captionkit caption-dataset`` on the local engine and on Ray
Data with 1 and 2 captioning actors, the same files, images/s end to end.

    python benchmarks/batch_caption.py --checkpoint runs/flickr8k_lite0_lstm/best
    python benchmarks/batch_caption.py --preset flickr8k_lite0_lstm --images 200

Files: ``--photos`` (default ``../shared/photos`` when present, else ``--images`` generated
500x375 JPEGs), repeated through links up to ``--images`` distinct paths. Model:
``--checkpoint``, else an untrained checkpoint of ``--preset`` (its decoder always writes
``max_len`` words: a worst case), else a tiny shapes model trained for a few seconds. Each run
is timed from listing the files to the output written (driver model load, actor starts and
decoding included; the Ray instance is started once, before, with one logical CPU per actor
plus one for decoding, at least the machine's CPUs). The runs' captions are compared (each
engine must give the local engine's). Ends with ``local_images_per_s=`` and
``ray_images_per_s=`` (the best Ray row).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from captionkit.infer.batch import BatchSettings, run_batch
from captionkit.infer.batch_io import read_rows
from captionkit.threads import available_cpus

ROOT = Path(__file__).resolve().parents[1]
SHARED_PHOTOS = ROOT.parent / "shared" / "photos"


def gather_photos(photos: str | None, images: int, folder: Path) -> tuple[Path, str]:
    """A folder of ``images`` distinct paths: links to the photos (cycled), or generated
    JPEGs; and where they came from."""
    source = Path(photos) if photos else SHARED_PHOTOS if SHARED_PHOTOS.is_dir() else None
    found = sorted(p for p in source.glob("*.jpg")) if source else []
    folder.mkdir(parents=True)
    if not found:
        rng = np.random.default_rng(0)
        for i in range(images):
            pixels = rng.integers(0, 255, (375, 500, 3), np.uint8)  # (H, W, 3)
            Image.fromarray(pixels).save(folder / f"{i:05d}.jpg")
        return folder, f"{images} generated 500x375 JPEGs"
    for i in range(images):
        (folder / f"{i:05d}.jpg").symlink_to(found[i % len(found)].resolve())
    return folder, f"{images} links to the {len(found)} photos of {source}"


def tiny_checkpoint(folder: Path) -> Path:
    """A shapes model trained for a few steps (as the tests' fixture)."""
    from captionkit.config import Config
    from captionkit.data.shapes import generate_shapes
    from captionkit.train.fit import fit

    generate_shapes(folder / "shapes", num_train=32, num_dev=8, num_test=8, seed=1)
    cfg = Config().override([
        f"data.root={folder / 'shapes'}", "data.num_train=32", "data.num_dev=8",
        "data.num_test=8", "decoder.embed_dim=16", "decoder.hidden_dim=32",
        "decoder.attention_dim=16", "train.epochs=1", "train.batch_size=8",
        f"train.out_dir={folder / 'run'}", "train.eval_max_len=8"])
    return fit(cfg, progress=False).best_checkpoint


def preset_checkpoint(preset: str, folder: Path) -> Path:
    """An untrained model of ``preset`` saved as a checkpoint (2,500 made-up words)."""
    from captionkit.checkpoint import save_checkpoint
    from captionkit.config import load_config
    from captionkit.data.vocab import Vocabulary
    from captionkit.models.captioner import build_model

    cfg = load_config(preset)
    words = " ".join(f"w{i}" for i in range(2500))
    vocab = Vocabulary.build([words] * cfg.data.min_freq, cfg.data.min_freq, cfg.data.max_len)
    return save_checkpoint(folder / "preset", build_model(cfg, len(vocab)), cfg, vocab)


def start_ray(workers: list[int]) -> int | None:
    """Start a local Ray instance with CPUs for the most actors plus decoding; None when Ray
    is not installed."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        return None
    cpus = max(available_cpus(), max(workers, default=1) + 1)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    return cpus


def timed_runs(src: Path, out: Path, settings: BatchSettings, workers: list[int],
               ray_cpus: int | None) -> list[tuple[str, float, float, dict]]:
    """(what, seconds, images/s, captions by path) for local and each Ray width."""
    from captionkit.infer.batch_ray import RayOptions

    runs = [("local", "local", None)]
    if ray_cpus is not None:
        warm = out / "warmup"  # Ray's first job also starts its worker pool: not timed
        warm.mkdir(parents=True)
        (warm / "0.jpg").symlink_to(next(src.glob("*.jpg")))
        run_batch(warm, out / "warmup.jsonl", settings, "ray", RayOptions())
        runs += [(f"ray, {n} actor{'s' if n > 1 else ''}", "ray", RayOptions(workers=n))
                 for n in workers]
    rows = []
    for i, (what, engine, options) in enumerate(runs):
        target = out / f"run{i}.parquet"
        report = run_batch(src, target, settings, engine, options)
        captions = {r["path"]: r["caption"] for r in read_rows(target)}
        rows.append((what, report.seconds, report.images_per_s, captions))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="checkpoint to caption with")
    ap.add_argument("--preset", help="or: an untrained model of this preset")
    ap.add_argument("--photos", help="folder of JPEGs (default: ../shared/photos if present)")
    ap.add_argument("--images", type=int, default=200, help="distinct files captioned")
    ap.add_argument("--workers", default="1,2", help="Ray actor counts, comma-separated")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--beam", type=int, default=3)
    ap.add_argument("--max-len", type=int, help="most words a caption (default: the vocab's)")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",") if w]
    with tempfile.TemporaryDirectory(prefix="batch_caption_") as tmp:
        report(args, workers, Path(tmp))


def report(args: argparse.Namespace, workers: list[int], tmp: Path) -> None:
    """Gather the files and the model, time every engine, print the table and figures."""
    src, where = gather_photos(args.photos, args.images, tmp / "photos")
    ckpt = (args.checkpoint or (preset_checkpoint(args.preset, tmp) if args.preset
                                else tiny_checkpoint(tmp / "tiny")))
    model = args.checkpoint or (f"untrained {args.preset}" if args.preset else "tiny shapes")
    settings = BatchSettings((str(ckpt),), beam=args.beam, max_len=args.max_len,
                             batch_size=args.batch_size)
    ray_cpus = start_ray(workers)
    print(f"machine: {platform.machine()}, {available_cpus()} CPUs, torch {torch.__version__}; "
          f"model: {model}; files: {where}; beam {args.beam}, batch {args.batch_size}; Ray: "
          f"{f'{ray_cpus} logical CPUs' if ray_cpus else 'not installed'}")
    rows = timed_runs(src, tmp / "out", settings, workers, ray_cpus)
    reference = rows[0][3]
    print(f"\n{'engine':<16} {'images':>7} {'seconds':>8} {'images/s':>9}  captions")
    for what, seconds, rate, captions in rows:
        same = "= local" if captions == reference else "DIFFER from local"
        print(f"{what:<16} {len(captions):>7} {seconds:>8.1f} {rate:>9.1f}  {same}")
    ray_rows = rows[1:]
    for (_, _, rate, _), n in zip(ray_rows, workers, strict=False):
        print(f"ray{n}_images_per_s={rate:.1f}")
    print(f"local_images_per_s={rows[0][2]:.1f}")
    print(f"ray_images_per_s={max((r[2] for r in ray_rows), default=float('nan')):.1f}")


if __name__ == "__main__":
    main()
