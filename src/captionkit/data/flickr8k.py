"""Reader for the official Flickr8k release (images folder, token file and split lists)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from captionkit.data.csv_captions import DEFAULT_NAME as CSV_NAME
from captionkit.data.csv_captions import relative_note
from captionkit.data.records import SPLITS, CaptionRecord, check_images_exist
from captionkit.errors import DatasetError

IMAGE_DIR = "Flicker8k_Dataset"  # sic: the official archive spells it "Flicker"
TEXT_DIR = "Flickr8k_text"
TOKEN_FILE = "Flickr8k.token.txt"
SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "dev": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
_TOKEN_KEY = re.compile(r"^(?P<name>.+)#(?P<index>\d+)$")
_SHOW_MISSING = 5
_AS_CSV = "read it as a CSV dataset with --dataset csv (or --set data.dataset=csv)"


def read_flickr8k(root: str | Path) -> list[CaptionRecord]:
    """Read Flickr8k from ``root`` as laid out by the official download.

    Returns one record per image named in a split list (train, dev, test; a missing list
    means that split is absent), ordered train, dev, test and then by list order.
    Raises :class:`DatasetError` naming the file (and line) for anything missing or malformed.
    """
    given, root = root, Path(root).expanduser().absolute()
    if root.is_file() and root.suffix.lower() == ".csv":
        raise DatasetError(f"a CSV file, not a Flickr8k folder: {_AS_CSV}", str(root))
    if not root.is_dir():
        raise DatasetError(f"Flickr8k folder not found{relative_note(given)}; point data.root "
                           f"at the folder holding {TEXT_DIR}/ and {IMAGE_DIR}/ (--data-dir DIR "
                           "or --set data.root=DIR)", str(root))
    token_path = root / TEXT_DIR / TOKEN_FILE
    if not token_path.is_file():
        also = f"; the folder holds {CSV_NAME}: {_AS_CSV}" if (root / CSV_NAME).is_file() else ""
        raise DatasetError(f"Flickr8k caption file not found (expected {token_path}){also}",
                           str(root))
    image_dir = root / IMAGE_DIR
    if not image_dir.is_dir():
        raise DatasetError(f"Flickr8k image folder not found (expected {image_dir})", str(root))

    captions = _read_tokens(token_path)
    records: list[CaptionRecord] = []
    seen: dict[str, str] = {}  # image -> "file:line" where it was first listed
    for split in SPLITS:
        list_path = root / TEXT_DIR / SPLIT_FILES[split]
        if not list_path.is_file():
            continue
        for lineno, line in _lines(list_path):
            name = line.strip()
            if name in seen:
                raise DatasetError(
                    f"{name} is already listed at {seen[name]}", str(list_path), lineno
                )
            if name not in captions:
                raise DatasetError(
                    f"{name} has no captions in {TOKEN_FILE}", str(list_path), lineno
                )
            seen[name] = f"{list_path.name}:{lineno}"
            records.append(CaptionRecord(str(image_dir / name), tuple(captions[name]), split, name))
    if not records:
        names = ", ".join(SPLIT_FILES.values())
        raise DatasetError(f"no split lists found (looked for {names})", str(root / TEXT_DIR))
    check_images_exist(records, image_dir)
    return records


def _read_tokens(path: Path) -> dict[str, list[str]]:
    """Parse ``name.jpg#n<TAB>caption`` lines into captions per image, in file order."""
    captions: dict[str, list[str]] = {}
    seen: dict[str, int] = {}  # caption id -> line
    for lineno, line in _lines(path):
        if "\x00" in line:
            raise DatasetError("NUL byte in the line (a binary or corrupted file?)", str(path),
                               lineno)
        key, tab, caption = line.partition("\t")
        match = _TOKEN_KEY.match(key.strip())
        if not tab or match is None:
            raise DatasetError("expected '<image>.jpg#<n><TAB><caption>'", str(path), lineno)
        if key.strip() in seen:
            raise DatasetError(f"duplicate caption id {key.strip()} (first on line "
                               f"{seen[key.strip()]})", str(path), lineno)
        seen[key.strip()] = lineno
        caption = caption.strip()
        if not caption:
            raise DatasetError(f"empty caption for {key.strip()}", str(path), lineno)
        captions.setdefault(match["name"], []).append(caption)
    if not captions:
        raise DatasetError("caption file is empty", str(path))
    return captions


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, line)`` for non-blank lines (BOM and CRLF tolerated)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"not valid UTF-8 ({e.reason} at byte {e.start})", str(path)) from None
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield lineno, line.rstrip("\r")
