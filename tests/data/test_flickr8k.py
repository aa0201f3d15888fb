"""The Flickr8k reader's errors for a wrong data folder: which path it tried from which working
directory, and the CSV dataset when the folder holds ``captions.csv`` (the reader's format
cases are in test_readers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from captionkit.config import DataConfig
from captionkit.data import load_records
from captionkit.data.csv_captions import read_csv
from captionkit.data.flickr8k import read_flickr8k
from captionkit.errors import DatasetError


def test_a_relative_root_names_the_path_tried_and_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError) as info:
        read_flickr8k("f8k_small")
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'f8k_small'}: Flickr8k folder not found (data.root "
                          f"'f8k_small' is relative to the working directory {tmp_path});")
    assert "Flickr8k_text/ and Flicker8k_Dataset/" in msg and "--data-dir DIR" in msg


def test_an_absolute_root_does_not_blame_the_working_directory(tmp_path):
    with pytest.raises(DatasetError, match="Flickr8k folder not found; point data.root") as info:
        read_flickr8k(tmp_path / "nope")
    assert str(info.value).startswith(str(tmp_path / "nope"))
    assert "working directory" not in str(info.value)


def test_a_folder_with_captions_csv_suggests_the_csv_dataset(tmp_path):
    (tmp_path / "captions.csv").write_text("image,caption\na.jpg,a dog\n")
    cfg = DataConfig(dataset="flickr8k", root=str(tmp_path))
    with pytest.raises(DatasetError) as info:
        load_records(cfg)  # what `captionkit train --data-dir DIR` does with the default dataset
    msg = str(info.value)
    assert "Flickr8k caption file not found (expected" in msg
    assert msg.endswith("the folder holds captions.csv: read it as a CSV dataset with --dataset "
                        "csv (or --set data.dataset=csv)")


def test_a_csv_file_as_root_suggests_the_csv_dataset(tmp_path):
    (tmp_path / "captions.csv").write_text("image,caption\na.jpg,a dog\n")
    with pytest.raises(DatasetError, match=r"captions\.csv: a CSV file, not a Flickr8k folder: "
                       r"read it as a CSV dataset with --dataset csv"):
        read_flickr8k(tmp_path / "captions.csv")


def test_a_folder_without_captions_csv_gets_no_csv_hint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="caption file not found") as info:
        read_flickr8k(tmp_path)
    assert "csv" not in str(info.value)


def test_the_csv_reader_names_the_working_directory_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError) as info:
        read_csv("data/caps.csv")
    assert str(info.value).startswith(
        f"{Path(tmp_path, 'data', 'caps.csv')}: caption CSV not found (data.root 'data/caps.csv' "
        f"is relative to the working directory {tmp_path}); point data.root at the CSV file")
