"""Reader for the official COCO captions release (``annotations/captions_*.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from captionkit.data.records import CaptionRecord, check_images_exist, load_json
from captionkit.errors import DatasetError

# year -> (split, annotation file under annotations/, image folder under root)
LAYOUTS = {
    "2014": (
        ("train", "captions_train2014.json", "train2014"),
        ("dev", "captions_val2014.json", "val2014"),
    ),
    "2017": (
        ("train", "captions_train2017.json", "train2017"),
        ("dev", "captions_val2017.json", "val2017"),
    ),
}
_SHOW_MISSING = 5


def read_coco(root: str | Path) -> list[CaptionRecord]:
    """Read COCO captions from ``root`` (holding ``annotations/`` and the image folders).

    Uses the 2014 or the 2017 files (train -> ``train``, val -> ``dev``); a folder with both
    years is rejected rather than guessed. Records are ordered train then dev, each in the
    JSON's image order, captions in annotation order. Raises :class:`DatasetError` naming
    the file for anything missing or malformed.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DatasetError("COCO folder not found", str(root))
    ann_dir = root / "annotations"
    found = {
        year: [part for part in parts if (ann_dir / part[1]).is_file()]
        for year, parts in LAYOUTS.items()
    }
    found = {year: parts for year, parts in found.items() if parts}
    if not found:
        names = ", ".join(name for parts in LAYOUTS.values() for _, name, _ in parts)
        raise DatasetError(f"no COCO caption files found (looked for {names})", str(ann_dir))
    if len(found) > 1:
        raise DatasetError(
            "found both 2014 and 2017 caption files; keep one year's files", str(ann_dir)
        )

    records: list[CaptionRecord] = []
    (parts,) = found.values()
    for split, ann_name, image_folder in parts:
        image_dir = root / image_folder
        if not image_dir.is_dir():
            raise DatasetError(f"image folder not found (expected {image_dir})", str(root))
        split_records = _read_split(ann_dir / ann_name, image_dir, split)
        check_images_exist(split_records, ann_dir / ann_name)
        records.extend(split_records)
    return records


def _read_split(path: Path, image_dir: Path, split: str) -> list[CaptionRecord]:
    """Records of one annotation file, captions grouped per image in annotation order."""
    data = load_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise DatasetError(
            "expected a JSON object with 'images' and 'annotations' lists", str(path)
        )

    files: dict[str, str] = {}  # image id -> file name, in "images" order
    for k, image in enumerate(images):
        _require(image, ("id", "file_name"), f"images[{k}]", path)
        image_id = str(image["id"])
        if image_id in files:
            raise DatasetError(f"images[{k}]: id {image_id} appears twice", str(path))
        files[image_id] = str(image["file_name"])

    captions: dict[str, list[str]] = {image_id: [] for image_id in files}
    for k, ann in enumerate(annotations):
        _require(ann, ("image_id", "caption"), f"annotations[{k}]", path)
        image_id = str(ann["image_id"])
        if image_id not in captions:
            raise DatasetError(
                f"annotations[{k}]: image_id {image_id} is not in 'images'", str(path)
            )
        text = ann["caption"]
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f"annotations[{k}]: empty caption", str(path))
        captions[image_id].append(text.strip())

    records = []
    for image_id, file_name in files.items():
        if not captions[image_id]:
            raise DatasetError(f"image id {image_id} ({file_name}) has no captions", str(path))
        records.append(
            CaptionRecord(str(image_dir / file_name), tuple(captions[image_id]), split, image_id)
        )
    return records


def _require(item: Any, keys: tuple[str, ...], where: str, path: Path) -> None:
    """Raise unless ``item`` is an object holding every key in ``keys``."""
    if not isinstance(item, dict):
        raise DatasetError(f"{where}: expected an object", str(path))
    for key in keys:
        if key not in item:
            raise DatasetError(f"{where}: missing key '{key}'", str(path))
