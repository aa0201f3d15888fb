"""The GPU benchmark runs end to end (tiny sizes, on the CPU), so a lent device's few minutes
are never spent on a script that fails before its first row."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["ref32", "ref16", "eager", "compiled", "graphed", "score", "kernel", "hoisted",
            "hoisted+k"]


def test_gpu_train_speed_quick_prints_every_row_and_the_headline_figures():
    paths = [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_train_speed.py"), "--quick",
           "--steps", "2", "--repeats", "1", "--batches", "2", "--batch-sizes", "32",
           "--best", "64", "--variants", ",".join(VARIANTS), "--beam-images", "16"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "FAILED" not in out.stdout
    table = out.stdout.split("\n\n")[-1].splitlines()
    rows = [line for line in table if line.split()[0].isdigit()]
    assert len(rows) == len(VARIANTS) + 1  # one row a variant at batch 32, the best row
    assert rows[-1].split()[0] == "64" and "bucketed" in rows[-1]
    figures = dict(line.split("=") for line in table if re.fullmatch(r"\w+=[\d.]+", line))
    assert list(figures) == ["best_captions_per_s", "b32_captions_per_s",
                             "coco_epoch_seconds", "beam3_images_per_s"]
    assert all(float(v) > 0 for v in figures.values())
    assert float(figures["b32_captions_per_s"]) <= float(figures["best_captions_per_s"])
