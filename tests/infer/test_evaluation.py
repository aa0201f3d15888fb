"""``evaluate_checkpoint`` / ``captionkit evaluate``: COCO results + metrics files."""

from __future__ import annotations

import json

import pytest

from captionkit.checkpoint import load_checkpoint
from captionkit.cli import main
from captionkit.data import by_split, load_records
from captionkit.data.features import extract_features
from captionkit.errors import CaptionKitError
from captionkit.infer.evaluation import DecodeSettings, evaluate_checkpoint


def test_evaluate_writes_coco_results_and_metrics(trained_checkpoint, shapes_root, tmp_path):
    rec = evaluate_checkpoint(trained_checkpoint, data_dir=str(shapes_root), split="dev",
                              settings=DecodeSettings(beam=2), out=tmp_path, progress=False)
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == 8 == len({r["image_id"] for r in results}) == rec["images"]
    assert all(set(r) == {"image_id", "caption"} for r in results)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["scores"] == rec["scores"] and saved["decode"]["beam"] == 2
    for name in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr-D"):
        assert 0 <= rec["scores"][name] <= 10
    for name in ("METEOR", "SPICE"):  # a score, or unavailable with the reason; never both
        assert (name in rec["scores"]) != (name in rec["unavailable"])
    assert all(reason for reason in rec["unavailable"].values())


def test_feature_cache_gives_the_same_captions(trained_checkpoint, shapes_root, tmp_path):
    model, cfg, _, _ = load_checkpoint(trained_checkpoint)
    cfg = cfg.override([f"data.root={shapes_root}"])
    records = by_split(load_records(cfg.data), "dev")
    extract_features(records, model.encoder, tmp_path / "cache", num_workers=0, progress=False)
    a = evaluate_checkpoint(trained_checkpoint, data_dir=str(shapes_root), out=tmp_path / "a",
                            settings=DecodeSettings(beam=1), progress=False)
    b = evaluate_checkpoint(trained_checkpoint, data_dir=str(shapes_root), out=tmp_path / "b",
                            settings=DecodeSettings(beam=1), progress=False,
                            feature_cache=str(tmp_path / "cache"))
    ra = json.loads((tmp_path / "a/results.json").read_text())
    rb = json.loads((tmp_path / "b/results.json").read_text())
    assert [r["image_id"] for r in ra] == [r["image_id"] for r in rb]
    same = sum(x == y for x, y in zip(ra, rb, strict=True))
    assert same >= len(ra) - 1  # fp16 features may flip one near-tie at most
    assert a["images"] == b["images"] == 8


def test_cli_evaluate(trained_checkpoint, shapes_root, tmp_path, capsys):
    rc = main(["evaluate", "--checkpoint", str(trained_checkpoint), "--data-dir",
               str(shapes_root), "--split", "test", "--beam", "3", "--out", str(tmp_path),
               "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "CIDEr-D" in out and "test (8 images), beam 3" in out
    assert (tmp_path / "metrics.json").is_file()


def test_empty_split_refused(trained_checkpoint, shapes_root, tmp_path):
    with pytest.raises(CaptionKitError, match="has no images"):
        evaluate_checkpoint(trained_checkpoint, data_dir=str(shapes_root), split="nope",
                            progress=False)


def test_scoring_a_results_file_and_refusing_bad_ones(shapes_root, tmp_path, capsys):
    from captionkit.data.shapes import read_shapes

    dev = [r for r in read_shapes(shapes_root) if r.split == "dev"]
    good = [{"image_id": r.image_id, "caption": r.captions[0]} for r in dev]
    (tmp_path / "good.json").write_text(json.dumps(good))
    args = ["evaluate", "--results", str(tmp_path / "good.json"), "--dataset", "shapes",
            "--data-dir", str(shapes_root), "--split", "dev", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["scores"]["BLEU-1"] > 0.9
    bad = {"dupe": good + good[:1], "unknown": good + [{"image_id": "zz", "caption": "a"}],
           "empty": [{**good[0], "caption": "  "}] + good[1:]}
    why = {"dupe": "more than once", "unknown": "not in the reference set",
           "empty": "empty"}
    for name, rows in bad.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(rows))
        args[2] = str(tmp_path / f"{name}.json")
        capsys.readouterr()
        assert main(args) == 2
        assert why[name] in capsys.readouterr().err
