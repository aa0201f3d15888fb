"""Batch captioning on the local engine (the reference): the same captions as
``captionkit caption``, one row a file (broken files included), sources, outputs, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from captionkit.cli import IMAGE_SUFFIXES, main
from captionkit.errors import CaptionKitError
from captionkit.infer import batch
from captionkit.infer.batch import BatchSettings, list_sources, run_batch
from captionkit.infer.batch_io import journal_path, read_rows

ROOT = Path(__file__).resolve().parents[2]
BEAM, MAX_LEN = 2, 8  # short captions: seconds of CPU work


def settings(checkpoint, batch_size: int = 8) -> BatchSettings:
    return BatchSettings((str(checkpoint),), beam=BEAM, max_len=MAX_LEN, batch_size=batch_size)


def by_path(path) -> dict[str, dict]:
    rows = list(read_rows(path))
    found = {r["path"]: r for r in rows}
    assert len(found) == len(rows), "a path has two rows"
    return found


def caption_cli(files: list[str], checkpoint, out: Path) -> dict[str, dict]:
    """What ``captionkit caption --json`` writes for the files, by path."""
    main(["caption", *files, "--checkpoint", str(checkpoint), "--beam", str(BEAM),
          "--max-len", str(MAX_LEN), "--json", str(out)])
    return {r["image"]: r for r in map(json.loads, out.read_text().splitlines())}


def test_local_rows_are_the_captions_caption_gives(trained_checkpoint, few_images, tmp_path,
                                                    capsys):
    out = tmp_path / "captions.parquet"
    report = run_batch(few_images.root, out, settings(trained_checkpoint))
    rows = by_path(out)
    assert sorted(rows) == few_images.files  # every file once, notes.txt not among them
    assert (report.files, report.rows, report.failed) == (36, 36, 3)
    assert report.captioned == 33 and report.duplicates == 0 and report.skipped == 0
    want = caption_cli(few_images.files, trained_checkpoint, tmp_path / "cli.jsonl")
    assert sorted(want) == sorted(few_images.good)
    for path in few_images.good:
        row = rows[path]
        assert row["caption"] == want[path]["caption"] and row["error"] is None
        assert row["score"] == pytest.approx(want[path]["score"], abs=1e-3)
        assert [a["text"] for a in row["alternatives"]] == [t for t, _ in
                                                           want[path]["alternatives"]]
    for path in few_images.bad:
        assert rows[path]["caption"] is None and rows[path]["score"] is None
        assert path in rows[path]["error"] and "cannot read image" in rows[path]["error"]
    assert not journal_path(out).exists()
    capsys.readouterr()


def test_jsonl_output_holds_the_same_rows_as_parquet(trained_checkpoint, few_images, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(few_images.files[:10]) + "\n")
    run_batch(listing, tmp_path / "a.parquet", settings(trained_checkpoint))
    run_batch(listing, tmp_path / "a.jsonl", settings(trained_checkpoint, batch_size=3))
    parquet, jsonl = by_path(tmp_path / "a.parquet"), by_path(tmp_path / "a.jsonl")
    assert sorted(parquet) == few_images.files[:10]
    assert {p: r["caption"] for p, r in parquet.items()} == \
        {p: r["caption"] for p, r in jsonl.items()}
    assert set(json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])) == {
        "path", "caption", "score", "alternatives", "error"}


def test_sources_folders_lists_and_single_images(few_images, tmp_path):
    assert batch.IMAGE_SUFFIXES == IMAGE_SUFFIXES  # the same images as `captionkit caption`
    assert list_sources(few_images.root) == few_images.files  # recursive, .PNG too, sorted
    sub = tmp_path / "sub"
    sub.mkdir()
    rel = Path(few_images.good[1]).relative_to(few_images.root)
    (sub / "list.txt").write_text(f"# a comment\n\n{few_images.good[0]}\n../link/{rel}\n"
                                  f"{few_images.good[0]}\n/no/such.jpg\n")
    (tmp_path / "link").symlink_to(few_images.root)
    assert list_sources(sub / "list.txt") == [few_images.good[0],
                                              str(tmp_path / "link" / rel), "/no/such.jpg"]
    assert list_sources(few_images.good[2]) == [few_images.good[2]]


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: p.mkdir(), "no images to caption"),
    (lambda p: (p.mkdir(), (p / "a.txt").write_text("x")), "no images to caption"),
    (lambda p: p.write_text("# nothing listed\n\n"), "no images to caption"),
    (lambda p: p.write_bytes(b"\xff\xfe\x00\x81binary"), "neither an image nor a text file"),
    (lambda p: None, "no such folder or file"),
])
def test_a_source_without_images_is_a_clear_error(make, says, tmp_path):
    src = tmp_path / "src"
    make(src)
    with pytest.raises(CaptionKitError, match=says):
        list_sources(src)


def test_cli_refuses_an_existing_output_then_overwrites_or_resumes(trained_checkpoint,
                                                                    few_images, tmp_path,
                                                                    capsys):
    out = tmp_path / "c.jsonl"
    first = tmp_path / "first.txt"
    first.write_text("\n".join(few_images.files[:12]))
    base = ["caption-dataset", "--checkpoint", str(trained_checkpoint), "--out", str(out),
            "--beam", str(BEAM), "--max-len", str(MAX_LEN), "--batch-size", "5", "--quiet"]
    assert main([*base[:1], str(first), *base[1:]]) == 0
    assert f"wrote {out}: 12 rows" in capsys.readouterr().out
    before = by_path(out)
    for again, says in (([], "exists: pass --resume"),
                        (["--resume", "--overwrite"], "exclude each other")):
        assert main([*base[:1], str(few_images.root), *base[1:], *again]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err and "Traceback" not in err
    assert main([*base[:1], str(few_images.root), *base[1:], "--resume"]) == 0
    said = capsys.readouterr().out
    done = sum(r["error"] is None for r in before.values())
    assert f"{done} already done" in said and "36 rows" in said
    after = by_path(out)
    assert sorted(after) == few_images.files
    assert all(after[p] == r for p, r in before.items() if r["error"] is None)  # kept as is
    assert main([*base[:1], str(first), *base[1:], "--overwrite"]) == 0
    assert sorted(by_path(out)) == few_images.files[:12]
    capsys.readouterr()


def test_an_interrupted_run_resumes_from_its_journal(trained_checkpoint, few_images, tmp_path,
                                                     monkeypatch):
    out, calls = tmp_path / "c.parquet", []
    real = batch.BatchCaptioner.__call__

    def dies_on_the_third_batch(self, columns):
        calls.append(len(columns["path"]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, columns)

    monkeypatch.setattr(batch.BatchCaptioner, "__call__", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        run_batch(few_images.root, out, settings(trained_checkpoint))
    monkeypatch.setattr(batch.BatchCaptioner, "__call__", real)
    assert not out.exists() and len(list(read_rows(journal_path(out)))) == 16
    with pytest.raises(CaptionKitError, match="interrupted run"):
        run_batch(few_images.root, out, settings(trained_checkpoint))
    report = run_batch(few_images.root, out, settings(trained_checkpoint), resume=True)
    journaled = [p for p in few_images.files[:16] if p not in few_images.bad]
    assert report.skipped == len(journaled) and report.rows == 36
    assert sorted(by_path(out)) == few_images.files and not journal_path(out).exists()


def test_output_suffix_chooses_the_format(few_images, tmp_path, capsys):
    code = main(["caption-dataset", str(few_images.root), "--checkpoint", "ckpt", "--out",
                 str(tmp_path / "out.csv")])
    err = capsys.readouterr().err
    assert code == 2 and ".parquet or .jsonl" in err and "Traceback" not in err


def test_ray_engine_without_ray_says_how_to_install_it(random_checkpoint, few_images,
                                                        tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(["caption-dataset", str(few_images.root), "--checkpoint",
                 str(random_checkpoint), "--out", str(tmp_path / "o.parquet"), "--engine",
                 "ray", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "pip install 'captionkit[ray]'" in err and "Traceback" not in err


def test_the_local_engine_never_imports_ray(random_checkpoint, few_images, tmp_path):
    script = (
        "import sys\n"
        "from captionkit.cli import main\n"
        f"code = main(['caption-dataset', {str(few_images.good[0])!r}, '--checkpoint', "
        f"{str(random_checkpoint)!r}, '--out', {str(tmp_path / 'o.parquet')!r}, "
        "'--max-len', '4', '--quiet'])\n"
        "assert code == 0, code\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(ROOT / "src"),
                                           "OMP_NUM_THREADS": "1", "PATH": ""})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "o.parquet").is_file()
