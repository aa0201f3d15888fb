"""Reader for a plain ``image,caption[,split]`` CSV, one row per caption."""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterator
from pathlib import Path

from captionkit.data.records import SPLITS, CaptionRecord, check_images_exist
from captionkit.errors import DatasetError

DEFAULT_NAME = "captions.csv"
SPLIT_NAMES = {"train": "train", "dev": "dev", "val": "dev", "test": "test"}
_SHOW_MISSING = 5


def read_csv(
    root: str | Path,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> list[CaptionRecord]:
    """Read captions from a CSV file, or from ``captions.csv`` inside a folder.

    The header needs ``image`` and ``caption`` columns; an optional ``split`` column
    (train/dev/val/test) assigns splits, otherwise unique images are shuffled with
    ``random.Random(seed)`` and cut by ``fractions`` (train, dev, test). Rows of the same
    image are grouped in first-appearance order; image paths are relative to the CSV's
    folder. Records are ordered train, dev, test. Raises :class:`DatasetError` naming
    ``file:line`` for bad input; ``ValueError`` for bad ``fractions``.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    path = Path(root).expanduser().absolute()
    if path.is_dir():
        path = path / DEFAULT_NAME
    if not path.is_file():
        raise DatasetError(f"caption CSV not found{relative_note(root)}; point data.root at the "
                           f"CSV file or at a folder holding {DEFAULT_NAME} (--data-dir PATH or "
                           "--set data.root=PATH)", str(path))

    rows = _rows(path)
    col = _columns(next(rows, (1, []))[1], path)
    captions, splits = _group_rows(rows, col, path)
    if not captions:
        raise DatasetError("no caption rows", str(path))

    if "split" in col:
        split_of = {image: split for image, (split, _) in splits.items()}
    else:
        split_of = _seeded_split(list(captions), seed, fractions)
    base = path.parent
    records = [
        CaptionRecord(str(base / image), tuple(caps), split_of[image], image)
        for image, caps in captions.items()
    ]
    records.sort(key=lambda r: SPLITS.index(r.split))
    check_images_exist(records, path)
    return records


def relative_note(given: str | Path) -> str:
    """`` (data.root 'x' is relative to the working directory /cwd)`` for a relative dataset
    path (what a reader tried depends on where it ran), else nothing."""
    if Path(given).expanduser().is_absolute():
        return ""
    return f" (data.root {str(given)!r} is relative to the working directory {Path.cwd()})"


def _columns(header_row: list[str], path: Path) -> dict[str, int]:
    """Column name -> index from the header row (image and caption required, split optional)."""
    header = [name.strip().lower() for name in header_row]
    missing_cols = [col for col in ("image", "caption") if col not in header]
    if missing_cols:
        raise DatasetError(
            f"header must name columns image,caption[,split]; missing {', '.join(missing_cols)}",
            str(path),
            1,
        )
    return {name: header.index(name) for name in ("image", "caption", "split") if name in header}


def _group_rows(rows, col: dict[str, int], path: Path
                ) -> tuple[dict[str, list[str]], dict[str, tuple[str, int]]]:
    """Captions per image as written, in first-appearance order, and each image's split with
    the line that set it (when the CSV has a split column)."""
    captions: dict[str, list[str]] = {}
    splits: dict[str, tuple[str, int]] = {}
    for line, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        image, caption = (_cell(row, col[name]) for name in ("image", "caption"))
        if not image or not caption:
            raise DatasetError(
                f"row needs a non-empty {'image' if not image else 'caption'}", str(path), line
            )
        captions.setdefault(image, []).append(caption)
        if "split" in col:
            split = SPLIT_NAMES.get(_cell(row, col["split"]).lower())
            if split is None:
                raise DatasetError(
                    f"split must be train, dev, val or test, got {_cell(row, col['split'])!r}",
                    str(path),
                    line,
                )
            first = splits.setdefault(image, (split, line))
            if first[0] != split:
                raise DatasetError(
                    f"{image} is in split {split} here but {first[0]} at line {first[1]}",
                    str(path),
                    line,
                )
    return captions, splits


def _read_text(path: Path) -> str:
    """The file decoded as UTF-8 (BOM allowed); bad bytes raise an error naming the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = e.object.count(b"\n", 0, e.start) + 1  # e.object has any BOM removed
        raise DatasetError(
            f"not valid UTF-8 ({e.reason} at byte {e.start})", str(path), line
        ) from None


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line number, row)`` of the CSV; :class:`csv.Error` becomes :class:`DatasetError`."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DatasetError(f"malformed CSV ({e})", str(path), reader.line_num) from None
        yield reader.line_num, row


def _cell(row: list[str], index: int) -> str:
    """A stripped cell, or ``""`` when the row is too short."""
    return row[index].strip() if index < len(row) else ""


def _seeded_split(
    images: list[str], seed: int, fractions: tuple[float, float, float]
) -> dict[str, str]:
    """Shuffle ``images`` with ``random.Random(seed)`` and cut by ``fractions``."""
    order = list(images)
    random.Random(seed).shuffle(order)
    n = len(order)
    cut1 = round(n * fractions[0])
    cut2 = round(n * (fractions[0] + fractions[1]))
    return {
        image: "train" if i < cut1 else "dev" if i < cut2 else "test"
        for i, image in enumerate(order)
    }
