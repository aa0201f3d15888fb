"""Reader for Karpathy split files (``dataset_coco.json``, ``dataset_flickr8k.json``, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from captionkit.data.records import SPLITS, CaptionRecord, check_images_exist, load_json
from captionkit.errors import DatasetError

SPLIT_NAMES = {"train": "train", "restval": "train", "val": "dev", "test": "test"}
_SHOW_MISSING = 5


def read_karpathy(root: str | Path) -> list[CaptionRecord]:
    """Read a Karpathy split JSON; ``root`` is the file or a folder holding one ``dataset_*.json``.

    Images resolve against the JSON's folder as ``<dir>/<filepath>/<filename>`` (or
    ``<dir>/<filename>`` without ``filepath``), falling back to ``<dir>/images/...``.
    Splits map ``val`` -> ``dev`` and ``restval`` -> ``train``. Records are ordered
    train, dev, test, then by file order. Raises :class:`DatasetError` for bad input.
    """
    path = _find_json(Path(root).expanduser().absolute())
    data = load_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DatasetError("expected a JSON object with an 'images' list", str(path))

    records: list[CaptionRecord] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(images):
        record = _parse_entry(entry, i, path)
        if record.image_id in seen:
            raise DatasetError(
                f"image #{i}: id {record.image_id} repeats image #{seen[record.image_id]}",
                str(path),
            )
        seen[record.image_id] = i
        records.append(record)
    if not records:
        raise DatasetError("no images listed", str(path))
    records.sort(key=lambda r: SPLITS.index(r.split))
    check_images_exist(records, path)
    return records


def _find_json(root: Path) -> Path:
    """The JSON file itself, or the single ``dataset_*.json`` inside a folder."""
    if root.is_file():
        return root
    if not root.is_dir():
        raise DatasetError("Karpathy split file or folder not found", str(root))
    found = sorted(root.glob("dataset_*.json"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise DatasetError(f"expected exactly one dataset_*.json, found {names}", str(root))
    return found[0]



def _parse_entry(entry: Any, i: int, path: Path) -> CaptionRecord:
    """One ``images[i]`` entry as a record (image path resolved, not yet checked)."""
    if not isinstance(entry, dict):
        raise DatasetError(f"image #{i}: expected an object", str(path))
    for key in ("filename", "split", "sentences"):
        if key not in entry:
            raise DatasetError(f"image #{i}: missing key '{key}'", str(path))
    filename = str(entry["filename"])
    split = SPLIT_NAMES.get(str(entry["split"]))
    if split is None:
        raise DatasetError(f"image #{i} ({filename}): unknown split {entry['split']!r}", str(path))
    sentences = entry["sentences"]
    if not isinstance(sentences, list) or not sentences:
        raise DatasetError(f"image #{i} ({filename}): no sentences", str(path))
    captions = []
    for j, sentence in enumerate(sentences):
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if not isinstance(raw, str) or not raw.strip():
            raise DatasetError(
                f"image #{i} ({filename}): sentence #{j} has no 'raw' text", str(path)
            )
        captions.append(raw.strip())
    image_id = str(entry["cocoid"]) if "cocoid" in entry else filename
    return CaptionRecord(_resolve(path.parent, entry), tuple(captions), split, image_id)


def _resolve(base: Path, entry: dict) -> str:
    """``<base>/<filepath>/<filename>``, else the same under ``<base>/images``."""
    rel = Path(entry.get("filepath", "")) / entry["filename"]
    for candidate in (base / rel, base / "images" / rel):
        if candidate.is_file():
            return str(candidate)
    return str(base / rel)
