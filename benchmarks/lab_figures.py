"""The attention lab's attention-map figures: one row per mechanism on the same photo (Flickr8k
rows) or shapes test image, each word's map over the image. Used by
``benchmarks/attention_lab.py`` (rows from :mod:`lab_report`); not run on its own."""

from __future__ import annotations

import textwrap
from pathlib import Path

from captionkit.checkpoint import read_meta
from captionkit.config import Config, load_config
from captionkit.data import by_split, load_records
from captionkit.data.images import load_image
from captionkit.infer.captioner import Captioner
from captionkit.infer.viz import upsample
from lab_report import BEAM, PHOTOS, label, visual_weights


def default_photo(args, rows: list[dict]) -> Path | None:
    """--photo, else the first jpg of ../shared/photos, else the first Flickr8k dev image."""
    if args.photo:
        return Path(args.photo)
    photos = sorted(PHOTOS.glob("*.jpg")) if PHOTOS.is_dir() else []
    if photos:
        return photos[0]
    for r in rows:
        if r.get("data_dir"):
            cfg = load_config(args.config, [f"data.root={r['data_dir']}"])
            dev = by_split(load_records(cfg.data, generate=False), "dev")
            if dev:
                return Path(dev[0].image)
    return None


def figure_entries(rows: list[dict], image) -> list[tuple]:
    """(label, image, result, visual weights) for each row's best checkpoint captioning
    ``image`` (a path or, for shapes, a PIL image) with beam 3, fp32."""
    entries = []
    for r in rows:
        ckpt = Path(r["dir"]) / "best"
        if not ckpt.is_dir():
            print(f"note: {r['bench']} {label(r)}: no checkpoint at {ckpt}, not in the figure")
            continue
        captioner = Captioner.from_checkpoint(ckpt, precision="fp32")
        res = captioner.caption(image, beam_size=BEAM)
        entries.append((label(r), res.image, res, visual_weights(res, r["attention"])))
    return entries


def attention_rows_figure(entries: list[tuple], path: Path, title: str) -> Path:
    """One row per mechanism: the image with its label and caption, then one panel per word
    with that word's attention map (min-max scaled per word) overlaid; full-colour PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 + max(len(res.words) for _, _, res, _ in entries)
    fig, axes = plt.subplots(len(entries), cols, figsize=(2.8 * cols, 3.8 * len(entries)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, (name, image, res, visual) in enumerate(entries):
        img = image.convert("RGB")
        img.thumbnail((256, 256))
        ax = axes[row, 0]
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.imshow(img)
        ax.set_title(name, fontsize=12, fontweight="bold")
        ax.set_xlabel("\n".join(textwrap.wrap(res.text, 32, max_lines=3, placeholder=" ...")),
                      fontsize=9)
        for i, word in enumerate(res.words):
            ax = axes[row, i + 1]
            ax.imshow(img)
            ax.imshow(upsample(res.attention[i], img.size), cmap="inferno", alpha=0.55,
                      vmin=0, vmax=1)
            ax.set_title(word if visual is None else f"{word}\n1-\u03b2 {visual[i]:.2f}",
                         fontsize=11)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, format="png")
    plt.close(fig)
    return path


def draw_attention_figures(args, rows: list[dict],
                           doc: Path) -> list[tuple[Path, str, bool]]:
    """The maps figure of the flickr8k rows on the photo (``<doc>.png``) and of the shapes
    rows on a shapes test image (``<doc>.png`` too when there are no flickr8k rows, else
    ``<doc>_shapes.png``): (path, caption, whether the doc may link it) of each figure drawn
    (not a figure of a ``../shared`` photo, which is not committed)."""
    figures = []
    flickr = [r for r in rows if r["bench"] == "flickr8k"]
    shapes = [r for r in rows if r["bench"] == "shapes"]
    photo = default_photo(args, flickr) if flickr else None
    what = f"Flickr8k models (best dev checkpoint of each row, beam {BEAM}) on `{{}}`"
    if flickr and kept_figure(flickr, doc.with_suffix(".png")):  # drawn on the same photo
        figures.append((doc.with_suffix(".png"), what.split(" on ")[0] + ", drawn earlier",
                        photo is not None and not shared_data(photo)))
    elif flickr and photo is not None and (entries := figure_entries(flickr, photo)):
        figures.append((attention_rows_figure(entries, doc.with_suffix(".png"), photo.name),
                        what.format(photo.name), not shared_data(photo)))
    path = doc.with_name(doc.stem + ("_shapes.png" if flickr else ".png"))
    what = f"shapes models (best checkpoint, beam {BEAM}) on test image `{{}}`"
    test = shapes_test_image(shapes)
    if shapes and kept_figure(shapes, path):
        figures.append((path, what.split(" on ")[0] + ", drawn earlier", True))
    elif test is not None and (entries := figure_entries(shapes, load_image(test.image))):
        figures.append((attention_rows_figure(entries, path, test.image_id),
                        what.format(test.image_id), True))
    return figures


def shared_data(photo: Path) -> bool:
    """Whether ``photo`` is the team's shared data (``../shared``), which stays out of the
    repository: a figure of it is drawn locally and the doc does not link it."""
    return PHOTOS.parent.resolve() in Path(photo).resolve().parents


def kept_figure(rows: list[dict], path: Path) -> bool:
    """Whether a figure drawn earlier stays as it is: some rows' checkpoints are gone now (a
    new checkout keeps the row JSON, not the runs), so redrawing would drop their rows."""
    missing = [label(r) for r in rows if not (Path(r["dir"]) / "best").is_dir()]
    if missing and path.is_file():
        print(f"note: {path} kept as drawn earlier: no checkpoint now for "
              f"{', '.join(missing)}")
        return True
    return False


def shapes_test_image(rows: list[dict]):
    """The first test record of the shapes data the rows were trained on (from a kept
    checkpoint's config), or None."""
    for r in rows:
        ckpt = Path(r["dir"]) / "best"
        if ckpt.is_dir():
            data = Config.from_dict(read_meta(ckpt)["config"]).data
            test = by_split(load_records(data, generate=False), "test")
            return test[0] if test else None
    return None
