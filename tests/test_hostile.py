"""Every entry point over the hostile corpus (tests/hostile/corpus.py): valid-but-odd images
are captioned (EXIF applied, modes converted), invalid ones give a clear error naming the file,
batch jobs go on and report them, caption files with bad encodings or structure are refused
with file:line; no crash, no hang (each test has a time limit)."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from captionkit.cli import IMAGE_SUFFIXES, main
from captionkit.data.flickr8k import read_flickr8k
from captionkit.data.images import load_image
from captionkit.errors import DatasetError, ImageLoadError
from captionkit.infer.captioner import load
from captionkit.server import ServeConfig, create_app
from tests.hostile.corpus import build_caption_files, build_images

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile") / "images"
    return folder, build_images(folder)


def test_corpus_is_large_and_mixed(corpus):
    _, entries = corpus
    assert len(entries) >= 50
    assert sum(e.valid for e in entries) >= 20 and sum(not e.valid for e in entries) >= 20


@pytest.mark.timeout(120)
def test_load_image_over_the_corpus(corpus):
    folder, entries = corpus
    for e in entries:
        path = folder / e.name
        if e.valid:
            im = load_image(path)
            assert im.mode == "RGB" and im.size == e.size, e.name  # EXIF orientation applied
        else:
            with pytest.raises(ImageLoadError) as err:
                load_image(path)
            assert e.name in str(err.value) and err.value.reason, e.name


@pytest.mark.timeout(180)
def test_server_answers_every_file_without_5xx(corpus, random_checkpoint):
    folder, entries = corpus
    app = create_app(load(random_checkpoint, precision="fp32"), ServeConfig())
    with TestClient(app) as client:
        for e in entries:
            data = (folder / e.name).read_bytes()
            r = client.post("/v1/captions", files={"image": (e.name, data, "image/jpeg")},
                            data={"beam": "1"})
            assert r.status_code == e.server, (e.name, r.status_code, r.text)
            body = r.json()
            if e.server == 200:
                assert body["image"]["width"], body["image"]["height"] == e.size
            else:
                assert body["error"] and body["status"] == e.server


def test_flickr8k_reader_over_hostile_caption_files(tmp_path):
    for name, (root, ok) in build_caption_files(tmp_path).items():
        if ok:
            records = read_flickr8k(root)
            assert {r.image_id for r in records} == {"a.jpg", "b.jpg"}, name
            assert all(c and "\r" not in c and "\ufeff" not in c
                       for r in records for c in r.captions), name
        else:
            with pytest.raises(DatasetError) as err:
                read_flickr8k(root)
            assert "Flickr8k.token.txt" in str(err.value), (name, str(err.value))


@pytest.fixture(scope="module")
def hostile_dataset(corpus):
    """A CSV dataset over the corpus: every file is a training image with one caption."""
    folder, entries = corpus
    path = folder / "captions.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption", "split"])
        for i, e in enumerate(entries):
            split = "dev" if i % 5 == 0 else "train"
            w.writerow([e.name, "a red square next to a blue circle", split])
    return path, entries


def _tiny(dataset_path, out) -> list[str]:
    preset = Path(__file__).resolve().parents[1] / "configs" / "shapes_demo.yaml"
    return ["--config", str(preset), "--dataset", "csv", "--data-dir", str(dataset_path), "--set",
            "decoder.embed_dim=16", "--set", "decoder.hidden_dim=16", "--set",
            "decoder.attention_dim=16", "--set", "train.batch_size=8", "--set",
            f"train.out_dir={out}", "--set", "train.eval_max_len=5", "--set",
            "data.min_freq=1"]


def test_extract_features_goes_on_and_lists_bad_files(hostile_dataset, tmp_path, capsys):
    path, entries = hostile_dataset
    out = tmp_path / "cache"
    code = main(["extract-features", "--out", str(out), "--quiet",
                 "--workers", "0", "--random-weights", *_tiny(path, tmp_path / "run")])
    assert code == 0
    failed = (out / "failed.txt").read_text()
    bad = [e.name for e in entries if not e.valid]
    assert all(name in failed for name in bad)
    assert not any(e.name in failed for e in entries if e.valid)
    assert f"{len(bad)} unreadable" in capsys.readouterr().out


def test_train_and_evaluate_skip_bad_images(hostile_dataset, tmp_path, capsys):
    path, entries = hostile_dataset
    run = tmp_path / "run"
    code = main(["train", "--quiet", *_tiny(path, run), "--set", "train.max_steps=2",
                 "--set", "train.epochs=1"])
    assert code == 0, capsys.readouterr().err
    skipped = (run / "skipped_images.txt").read_text()
    assert all(e.name in skipped for e in entries if not e.valid)
    code = main(["evaluate", "--checkpoint", str(run / "best"), "--dataset", "csv",
                 "--data-dir", str(path), "--split", "dev", "--beam", "1", "--out",
                 str(tmp_path / "eval"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    dev_bad = sum(not e.valid for i, e in enumerate(entries) if i % 5 == 0)
    assert metrics["left_out"] == dev_bad and metrics["images"] > 0


def test_caption_cli_captions_the_good_and_reports_the_bad(corpus, random_checkpoint, tmp_path,
                                                           capsys):
    folder, entries = corpus
    images = tmp_path / "images"
    shutil.copytree(folder, images, ignore=shutil.ignore_patterns("*.csv"))
    code = main(["caption", str(images), "--checkpoint", str(random_checkpoint),
                 "--json", str(tmp_path / "out.jsonl")])
    out, err = capsys.readouterr()
    assert code == 2 and f"{sum(not e.valid for e in entries)} of" in err
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    captioned = {json_line["image"].rsplit("/", 1)[-1] for json_line in lines}
    named = {e.name for e in entries if Path(e.name).suffix.lower() in IMAGE_SUFFIXES}
    assert captioned == {e.name for e in entries if e.valid} & named  # folders: image names
    for e in entries:
        if not e.valid:
            assert e.name in err
