"""Batch captioning on Ray Data: the Captioner's captions for 200 files (6 broken), one row
each, also when a captioning actor is killed mid-run. One local Ray instance serves every
test (its start is most of their time)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from captionkit.data.images import load_image  # noqa: E402
from captionkit.errors import CaptionKitError  # noqa: E402
from captionkit.infer import batch_ray  # noqa: E402
from captionkit.infer.batch import BatchSettings, load_captioner, run_batch  # noqa: E402
from captionkit.infer.batch_io import read_rows  # noqa: E402
from captionkit.infer.batch_ray import RayCaptioner, RayOptions  # noqa: E402

BEAM, MAX_LEN = 2, 8


@pytest.fixture(scope="module")
def local_ray():
    """A 2-CPU Ray instance: one captioning actor and one decoding task at a time."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def settings(trained_checkpoint) -> BatchSettings:
    return BatchSettings((str(trained_checkpoint),), beam=BEAM, max_len=MAX_LEN, batch_size=16)


@pytest.fixture(scope="module")
def reference(settings, batch_images) -> dict[str, tuple[str, float]]:
    """The Captioner's (caption, score) for every readable file, 16 at a time."""
    captioner = load_captioner(settings)
    found = {}
    for s in range(0, len(batch_images.good), 16):
        chunk = batch_images.good[s : s + 16]
        results = captioner.caption_batch([load_image(p) for p in chunk], BEAM, MAX_LEN)
        found.update({p: (r.text, r.score) for p, r in zip(chunk, results, strict=True)})
    return found


def check_rows(out: Path, images, reference) -> None:
    rows = list(read_rows(out))
    assert sorted(r["path"] for r in rows) == images.files  # each file exactly once
    for row in rows:
        if row["path"] in reference:
            text, score = reference[row["path"]]
            assert (row["caption"], row["error"]) == (text, None), row["path"]
            assert row["score"] == pytest.approx(score, abs=1e-3)
            assert row["alternatives"][0]["text"] == text and len(row["alternatives"]) == BEAM
        else:
            assert row["caption"] is None and "cannot read image" in row["error"]


def test_ray_gives_the_captioners_captions_one_row_a_file(local_ray, settings, batch_images,
                                                          reference, tmp_path):
    out = tmp_path / "captions.parquet"
    report = run_batch(batch_images.root, out, settings, engine="ray",
                       ray_options=RayOptions(workers=1))
    assert (report.files, report.rows, report.failed, report.duplicates) == (200, 200, 6, 0)
    check_rows(out, batch_images, reference)


def killed_once(marks: Path) -> type:
    """A RayCaptioner that kills its own process (SIGKILL) on its third batch, once; each
    start of one leaves a file named after its pid in ``marks``."""

    class KilledOnce(RayCaptioner):
        def __init__(self, settings, threads=None):
            super().__init__(settings, threads)
            (marks / f"started-{os.getpid()}").touch()
            self.calls = 0

        def __call__(self, batch):
            self.calls += 1
            if self.calls == 3 and not (marks / "killed").exists():
                (marks / "killed").touch()
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__call__(batch)

    return KilledOnce


def test_a_killed_actor_loses_and_repeats_no_row(local_ray, settings, batch_images, reference,
                                                 tmp_path, monkeypatch):
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setattr(batch_ray, "RayCaptioner", killed_once(marks))
    out = tmp_path / "captions.jsonl"
    report = run_batch(batch_images.root, out, settings, engine="ray",
                       ray_options=RayOptions(workers=1))
    assert (marks / "killed").exists()
    assert len(list(marks.glob("started-*"))) == 2  # the actor restarted once, in a new process
    assert (report.rows, report.duplicates) == (200, 0)
    check_rows(out, batch_images, reference)


def test_bad_inputs_are_refused_before_ray_works(local_ray, settings, batch_images, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CaptionKitError, match="no images to caption"):
        run_batch(empty, tmp_path / "o.parquet", settings, engine="ray")
    taken = tmp_path / "taken.parquet"
    taken.write_bytes(b"")
    with pytest.raises(CaptionKitError, match="exists: pass --resume"):
        run_batch(batch_images.root, taken, settings, engine="ray")
    with pytest.raises(CaptionKitError, match="the Ray cluster has 2 CPUs"):
        run_batch(batch_images.root, tmp_path / "o.parquet", settings, engine="ray",
                  ray_options=RayOptions(workers=2))
