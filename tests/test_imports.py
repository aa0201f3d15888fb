"""Inference never imports training: load, caption and evaluate in a fresh interpreter, then
look at what it imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

SCRIPT = """
import json, sys
import captionkit
from captionkit.data.shapes import read_shapes
from captionkit.infer.evaluation import DecodeSettings, evaluate_checkpoint

checkpoint, root = sys.argv[1], sys.argv[2]
text = captionkit.load(checkpoint, precision="fp32").caption(read_shapes(root)[0].image).text
record = evaluate_checkpoint(checkpoint, data_dir=root, split="dev",
                             settings=DecodeSettings(beam=1, batch_size=8),
                             metrics=("BLEU",), progress=False)
print(json.dumps({"caption": text, "scores": record["scores"], "file": captionkit.__file__,
                  "modules": sorted(sys.modules)}))
"""


def _is_training(name: str) -> bool:
    return (name == "captionkit.train" or name.startswith("captionkit.train.")
            or name == "triton" or name.startswith("triton."))


def test_inference_imports_no_training_code(random_checkpoint, shapes_root):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(random_checkpoint), str(shapes_root)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["caption"]  # it did caption, and score
    assert "BLEU-4" in out["scores"]
    assert Path(out["file"]).is_relative_to(SRC)  # this checkout's code, not an installed copy
    training = [m for m in out["modules"] if _is_training(m)]
    assert not training, f"inference imported training code: {training}"
