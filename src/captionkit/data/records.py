"""The one record type every dataset reader produces."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captionkit.errors import DatasetError


@dataclass(frozen=True)
class CaptionRecord:
    """One image with its reference captions.

    ``image`` is a filesystem path; ``split`` is ``train``/``dev``/``test`` (readers map
    ``val``/``restval`` names onto these); ``image_id`` is unique within a dataset.
    ``meta`` carries reader-specific extras (the shapes dataset stores object boxes there).
    """

    image: str
    captions: tuple[str, ...]
    split: str
    image_id: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


SPLITS = ("train", "dev", "test")


def by_split(records: list[CaptionRecord], split: str) -> list[CaptionRecord]:
    """Records of one split, in reader order."""
    return [r for r in records if r.split == split]


def check_images_exist(records: list[CaptionRecord], where: str | Path, show: int = 5) -> None:
    """Raise one :class:`DatasetError` with how many image files are missing and the first few."""
    missing = [r.image for r in records if not Path(r.image).is_file()]
    if missing:
        shown = ", ".join(missing[:show]) + (", ..." if len(missing) > show else "")
        raise DatasetError(f"{len(missing)} of {len(records)} images not found: {shown}",
                           str(where))


def load_json(path: Path) -> Any:
    """Parse a JSON file; decode errors become :class:`DatasetError` with the line number."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DatasetError(f"not valid UTF-8 ({e.reason} at byte {e.start})", str(path)) from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"invalid JSON: {e.msg} (column {e.colno})", str(path),
                           e.lineno) from None
