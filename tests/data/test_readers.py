"""Dataset readers: tiny fixtures built in tmp_path for every format, plus bad-input cases."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from captionkit.data.coco import read_coco
from captionkit.data.csv_captions import read_csv
from captionkit.data.flickr8k import read_flickr8k
from captionkit.data.karpathy import read_karpathy
from captionkit.data.records import CaptionRecord
from captionkit.errors import DatasetError

SHARED_FLICKR8K = Path(__file__).resolve().parents[2].parent / "shared" / "flickr8k"


def make_image(path: Path) -> Path:
    """Write a tiny real image (format from the suffix) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)
    return path


def split_counts(records: list[CaptionRecord]) -> Counter:
    return Counter(r.split for r in records)


def assert_images_exist(records: list[CaptionRecord]) -> None:
    assert all(Path(r.image).is_file() for r in records)


# --- Flickr8k -------------------------------------------------------------------------------

F8_IMAGES = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]


def make_flickr8k(root: Path, lists: dict[str, list[str]] | None = None) -> Path:
    """Official layout: 4 images x 2 captions; a,b train, c dev, d test by default."""
    for name in F8_IMAGES:
        make_image(root / "Flicker8k_Dataset" / name)
    text = root / "Flickr8k_text"
    text.mkdir(parents=True)
    tokens = "".join(f"{n}#{i}\t{n} caption {i} .\n" for n in F8_IMAGES for i in range(2))
    (text / "Flickr8k.token.txt").write_text(tokens, encoding="utf-8")
    lists = (
        {"train": ["a.jpg", "b.jpg"], "dev": ["c.jpg"], "test": ["d.jpg"]}
        if lists is None
        else lists
    )
    for split, names in lists.items():
        (text / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n")
    return root


def test_flickr8k_reads_splits_and_captions(tmp_path: Path) -> None:
    records = read_flickr8k(make_flickr8k(tmp_path))
    assert [r.split for r in records] == ["train", "train", "dev", "test"]
    assert [r.image_id for r in records] == F8_IMAGES
    assert records[0].captions == ("a.jpg caption 0 .", "a.jpg caption 1 .")
    assert_images_exist(records)


def test_flickr8k_missing_list_means_absent_split_and_unlisted_images_dropped(
    tmp_path: Path,
) -> None:
    records = read_flickr8k(make_flickr8k(tmp_path, {"train": ["a.jpg"], "dev": ["c.jpg"]}))
    assert split_counts(records) == {"train": 1, "dev": 1}


def test_flickr8k_bom_crlf_and_blank_lines(tmp_path: Path) -> None:
    root = make_flickr8k(tmp_path)
    token = root / "Flickr8k_text" / "Flickr8k.token.txt"
    token.write_bytes(b"\xef\xbb\xbf" + token.read_text().replace("\n", "\r\n\r\n").encode("utf-8"))
    train = root / "Flickr8k_text" / "Flickr_8k.trainImages.txt"
    train.write_bytes(b"\xef\xbb\xbfa.jpg\r\n\r\nb.jpg\r\n")
    records = read_flickr8k(root)
    assert split_counts(records) == {"train": 2, "dev": 1, "test": 1}
    assert records[0].captions == ("a.jpg caption 0 .", "a.jpg caption 1 .")


def test_flickr8k_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nope.*not found"):
        read_flickr8k(tmp_path / "nope")


def test_flickr8k_missing_token_file_names_expected_path(tmp_path: Path) -> None:
    root = make_flickr8k(tmp_path)
    (root / "Flickr8k_text" / "Flickr8k.token.txt").unlink()
    with pytest.raises(DatasetError, match=r"expected .*Flickr8k_text/Flickr8k\.token\.txt"):
        read_flickr8k(root)


def test_flickr8k_missing_image_folder(tmp_path: Path) -> None:
    root = make_flickr8k(tmp_path)
    (root / "Flicker8k_Dataset").rename(root / "images")
    with pytest.raises(DatasetError, match="Flicker8k_Dataset"):
        read_flickr8k(root)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("a.jpg#0 no tab here", r"Flickr8k\.token\.txt:2: expected"),
        ("a.jpg\tno index", r"Flickr8k\.token\.txt:2: expected"),
        ("a.jpg#1\t   ", r"Flickr8k\.token\.txt:2: empty caption"),
    ],
)
def test_flickr8k_malformed_token_line(tmp_path: Path, line: str, match: str) -> None:
    root = make_flickr8k(tmp_path)
    token = root / "Flickr8k_text" / "Flickr8k.token.txt"
    token.write_text(f"a.jpg#0\tok\n{line}\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=match):
        read_flickr8k(root)


def test_flickr8k_empty_token_file(tmp_path: Path) -> None:
    root = make_flickr8k(tmp_path)
    (root / "Flickr8k_text" / "Flickr8k.token.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match=r"Flickr8k\.token\.txt: caption file is empty"):
        read_flickr8k(root)


def test_flickr8k_listed_image_without_captions(tmp_path: Path) -> None:
    root = make_flickr8k(tmp_path, {"train": ["a.jpg", "zzz.jpg"]})
    with pytest.raises(
        DatasetError, match=r"Flickr_8k\.trainImages\.txt:2: zzz\.jpg has no captions"
    ):
        read_flickr8k(root)


def test_flickr8k_listed_in_two_splits(tmp_path: Path) -> None:
    root = make_flickr8k(tmp_path, {"train": ["a.jpg"], "dev": ["b.jpg", "a.jpg"]})
    with pytest.raises(DatasetError, match=r"devImages\.txt:2: a\.jpg is already listed"):
        read_flickr8k(root)


def test_flickr8k_missing_image_files_reported_together(tmp_path: Path) -> None:
    root = make_flickr8k(tmp_path)
    (root / "Flicker8k_Dataset" / "b.jpg").unlink()
    (root / "Flicker8k_Dataset" / "d.jpg").unlink()
    with pytest.raises(
        DatasetError, match=r"Flicker8k_Dataset: 2 of 4 images not found: .*b\.jpg, .*d\.jpg"
    ):
        read_flickr8k(root)


@pytest.mark.shared
def test_flickr8k_shared_data() -> None:
    if not SHARED_FLICKR8K.is_dir():
        pytest.skip(f"{SHARED_FLICKR8K} not present")
    records = read_flickr8k(SHARED_FLICKR8K)
    assert split_counts(records) == {"train": 6000, "dev": 1000}
    assert all(len(r.captions) == 5 for r in records)
    assert len({r.image_id for r in records}) == 7000


# --- Karpathy -------------------------------------------------------------------------------


def karpathy_entry(filename: str, split: str, n: int = 2, **extra: object) -> dict:
    sentences = [{"raw": f" {filename} says {i} ", "tokens": [filename, "says"]} for i in range(n)]
    return {"filename": filename, "split": split, "sentences": sentences, **extra}


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def test_karpathy_coco_style_with_filepath_and_split_mapping(tmp_path: Path) -> None:
    entries = [
        karpathy_entry("t.jpg", "train", filepath="train2014", cocoid=1),
        karpathy_entry("r.jpg", "restval", filepath="val2014", cocoid=2),
        karpathy_entry("v.jpg", "val", filepath="val2014", cocoid=3),
        karpathy_entry("x.jpg", "test", 3, filepath="val2014", cocoid=4),
    ]
    for e in entries:
        make_image(tmp_path / e["filepath"] / e["filename"])
    write_json(tmp_path / "dataset_coco.json", {"images": entries, "dataset": "coco"})
    records = read_karpathy(tmp_path)  # folder form
    assert [(r.image_id, r.split) for r in records] == [
        ("1", "train"),
        ("2", "train"),
        ("3", "dev"),
        ("4", "test"),
    ]
    assert records[0].captions == ("t.jpg says 0", "t.jpg says 1")
    assert len(records[3].captions) == 3
    assert records[1].image == str(tmp_path / "val2014" / "r.jpg")
    assert_images_exist(records)


def test_karpathy_flickr_style_falls_back_to_images_folder(tmp_path: Path) -> None:
    entries = [karpathy_entry("a.jpg", "train", imgid=0), karpathy_entry("b.png", "val", imgid=1)]
    make_image(tmp_path / "a.jpg")
    make_image(tmp_path / "images" / "b.png")
    path = write_json(tmp_path / "dataset_flickr8k.json", {"images": entries})
    records = read_karpathy(path)  # file form
    assert [(r.image_id, r.split) for r in records] == [("a.jpg", "train"), ("b.png", "dev")]
    assert records[1].image == str(tmp_path / "images" / "b.png")
    assert_images_exist(records)


def test_karpathy_invalid_json_gives_line(tmp_path: Path) -> None:
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text('{"images": [\n  {"filename": "a.jpg",\n  oops\n]}\n')
    with pytest.raises(DatasetError, match=r"dataset_flickr8k\.json:3: invalid JSON"):
        read_karpathy(path)


def test_karpathy_missing_key_names_image_index(tmp_path: Path) -> None:
    entries = [karpathy_entry("a.jpg", "train"), {"filename": "b.jpg", "sentences": []}]
    path = write_json(tmp_path / "dataset_flickr8k.json", {"images": entries})
    with pytest.raises(
        DatasetError, match=r"dataset_flickr8k\.json: image #1: missing key 'split'"
    ):
        read_karpathy(path)


def test_karpathy_entry_without_sentences(tmp_path: Path) -> None:
    entries = [karpathy_entry("a.jpg", "train", n=0)]
    path = write_json(tmp_path / "dataset_flickr8k.json", {"images": entries})
    with pytest.raises(
        DatasetError, match=r"dataset_flickr8k\.json: image #0 \(a\.jpg\): no sentences"
    ):
        read_karpathy(path)


def test_karpathy_missing_images_reported(tmp_path: Path) -> None:
    entries = [karpathy_entry("a.jpg", "train"), karpathy_entry("b.jpg", "test")]
    make_image(tmp_path / "a.jpg")
    path = write_json(tmp_path / "dataset_flickr8k.json", {"images": entries})
    with pytest.raises(
        DatasetError, match=r"dataset_flickr8k\.json: 1 of 2 images not found.*b\.jpg"
    ):
        read_karpathy(path)


def test_karpathy_folder_needs_exactly_one_json(tmp_path: Path) -> None:
    write_json(tmp_path / "dataset_coco.json", {"images": []})
    write_json(tmp_path / "dataset_flickr8k.json", {"images": []})
    with pytest.raises(DatasetError, match="exactly one dataset_.*found dataset_coco.json"):
        read_karpathy(tmp_path)


# --- COCO -----------------------------------------------------------------------------------


def make_coco(root: Path, year: str = "2014") -> Path:
    """train: ids 1, 2 (2 and 1 captions); val: id 3 (1 caption). Annotations interleaved."""
    layout = {
        "train": ([(1, "one.jpg"), (2, "two.jpg")], [(2, "two a"), (1, "one a"), (1, "one b")]),
        "val": ([(3, "three.jpg")], [(3, "three a")]),
    }
    for split, (images, anns) in layout.items():
        for _, name in images:
            make_image(root / f"{split}{year}" / name)
        write_json(
            root / "annotations" / f"captions_{split}{year}.json",
            {
                "images": [{"id": i, "file_name": n} for i, n in images],
                "annotations": [
                    {"id": k, "image_id": i, "caption": c} for k, (i, c) in enumerate(anns)
                ],
            },
        )
    return root


@pytest.mark.parametrize("year", ["2014", "2017"])
def test_coco_groups_captions_and_maps_val(tmp_path: Path, year: str) -> None:
    records = read_coco(make_coco(tmp_path, year))
    assert [(r.image_id, r.split) for r in records] == [
        ("1", "train"),
        ("2", "train"),
        ("3", "dev"),
    ]
    assert records[0].captions == ("one a", "one b")
    assert records[1].captions == ("two a",)
    assert records[2].image == str(tmp_path / f"val{year}" / "three.jpg")
    assert_images_exist(records)


def test_coco_no_annotation_files_names_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetError, match=r"annotations: no COCO caption files found .*captions_train2014\.json"
    ):
        read_coco(tmp_path)


def test_coco_invalid_json(tmp_path: Path) -> None:
    root = make_coco(tmp_path)
    (root / "annotations" / "captions_val2014.json").write_text('{\n"images": [,]}')
    with pytest.raises(DatasetError, match=r"captions_val2014\.json:2: invalid JSON"):
        read_coco(root)


def test_coco_annotation_with_unknown_image_id(tmp_path: Path) -> None:
    root = make_coco(tmp_path)
    path = root / "annotations" / "captions_val2014.json"
    data = json.loads(path.read_text())
    data["annotations"].append({"id": 9, "image_id": 77, "caption": "lost"})
    write_json(path, data)
    with pytest.raises(
        DatasetError, match=r"captions_val2014\.json: annotations\[1\]: image_id 77"
    ):
        read_coco(root)


def test_coco_image_without_captions(tmp_path: Path) -> None:
    root = make_coco(tmp_path)
    path = root / "annotations" / "captions_val2014.json"
    data = json.loads(path.read_text())
    data["images"].append({"id": 4, "file_name": "four.jpg"})
    write_json(path, data)
    with pytest.raises(
        DatasetError, match=r"captions_val2014\.json: image id 4 \(four\.jpg\) has no captions"
    ):
        read_coco(root)


def test_coco_missing_images_reported(tmp_path: Path) -> None:
    root = make_coco(tmp_path)
    (root / "train2014" / "two.jpg").unlink()
    with pytest.raises(
        DatasetError, match=r"captions_train2014\.json: 1 of 2 images not found: .*two\.jpg"
    ):
        read_coco(root)


def test_coco_both_years_rejected(tmp_path: Path) -> None:
    make_coco(tmp_path, "2014")
    make_coco(tmp_path, "2017")
    with pytest.raises(DatasetError, match="both 2014 and 2017"):
        read_coco(tmp_path)


# --- CSV ------------------------------------------------------------------------------------


def write_csv(root: Path, text: str, images: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in images:
        make_image(root / name)
    path = root / "captions.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_split_column_groups_rows(tmp_path: Path) -> None:
    text = (
        "image,caption,split\n"
        "img/a.jpg,a one,train\n"
        "img/b.png,b one,val\n"
        'img/a.jpg,"a two, with comma",train\n'
        "img/c.jpg,c one,test\n"
        "img/b.png,b two,val\n"
    )
    write_csv(tmp_path, text, ["img/a.jpg", "img/b.png", "img/c.jpg"])
    records = read_csv(tmp_path)  # folder form
    assert [(r.image_id, r.split) for r in records] == [
        ("img/a.jpg", "train"),
        ("img/b.png", "dev"),
        ("img/c.jpg", "test"),
    ]
    assert records[0].captions == ("a one", "a two, with comma")
    assert records[1].captions == ("b one", "b two")
    assert_images_exist(records)


def test_csv_seeded_split_is_deterministic(tmp_path: Path) -> None:
    names = [f"{i}.jpg" for i in range(10)]
    rows = "".join(f"{n},caption {k} of {n}\n" for k in range(2) for n in names)
    path = write_csv(tmp_path, "\ufeffimage,caption\n" + rows, names)  # BOM tolerated
    records = read_csv(path)
    assert split_counts(records) == {"train": 8, "dev": 1, "test": 1}
    assert all(len(r.captions) == 2 for r in records)
    assert [r.image_id for r in read_csv(path)] == [r.image_id for r in records]
    assert [r.image_id for r in read_csv(path, seed=1)] != [r.image_id for r in records]
    assert split_counts(read_csv(path, fractions=(0.5, 0.5, 0.0))) == {"train": 5, "dev": 5}
    assert_images_exist(records)


def test_csv_absolute_image_path(tmp_path: Path) -> None:
    image = make_image(tmp_path / "elsewhere" / "x.jpg")
    path = write_csv(tmp_path / "data", f"image,caption,split\n{image},an x,train\n", [])
    (record,) = read_csv(path)
    assert record.image == str(image)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("picture,caption\na.jpg,x\n", r"captions\.csv:1: header .*missing image"),
        ("", r"captions\.csv:1: header"),
        ("image,caption\na.jpg,x\n,y\n", r"captions\.csv:3: row needs a non-empty image"),
        ("image,caption\na.jpg,x\na.jpg\n", r"captions\.csv:3: row needs a non-empty caption"),
        (
            "image,caption,split\na.jpg,x,train\na.jpg,y,holdout\n",
            r"captions\.csv:3: split must be",
        ),
        (
            "image,caption,split\na.jpg,x,train\n\na.jpg,y,val\n",
            r"captions\.csv:4: a\.jpg is in split dev here but train at line 2",
        ),
        ("image,caption\n\n", r"captions\.csv: no caption rows"),
        ("image,caption\na.jpg,x\nb.jpg,y\n", r"captions\.csv: 1 of 2 images not found: .*b\.jpg"),
    ],
)
def test_csv_bad_input(tmp_path: Path, text: str, match: str) -> None:
    path = write_csv(tmp_path, text, ["a.jpg"])
    with pytest.raises(DatasetError, match=match):
        read_csv(path)


def test_csv_undecodable_bytes(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "", ["a.jpg"])
    path.write_bytes(b"\xef\xbb\xbfimage,caption\na.jpg,caf\xe9\n")
    with pytest.raises(DatasetError, match=r"captions\.csv:2: not valid UTF-8"):
        read_csv(path)


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"captions\.csv: caption CSV not found"):
        read_csv(tmp_path)
