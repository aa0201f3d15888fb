"""``notebooks/quickstart.ipynb``: stored clean, and it runs end to end.

The notebook is repository content (not in the wheel). It is executed with nbclient in a
kernel of this interpreter (a kernel spec written for the test, so a user's own ``python3``
kernel cannot stand in), from an empty working folder, with ``CAPTIONKIT_NOTEBOOK_SMOKE=1``:
its tiny config trains two models in seconds. Any cell error fails the test.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
KERNEL = "captionkit-test"


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _text(cell: dict) -> str:
    """The stream output of one executed cell."""
    return "".join(o["text"] if isinstance(o["text"], str) else "".join(o["text"])
                   for o in cell["outputs"] if o["output_type"] == "stream")


def _source(cell: dict) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def test_notebook_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    cells = _code_cells(nb)
    assert len(cells) >= 8
    dirty = [i for i, c in enumerate(cells) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"code cells {dirty} hold outputs or execution counts; clear them"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_notebook_reads_the_smoke_switch_and_data_root():
    text = "\n".join(_source(c) for c in _code_cells(json.loads(NOTEBOOK.read_text())))
    assert 'os.environ.get("CAPTIONKIT_NOTEBOOK_SMOKE") == "1"' in text
    assert re.search(r"^DATA_ROOT = None\b", text, re.M)  # the user's real-data switch
    assert "%pip install captionkit" in text


@pytest.mark.slow
def test_notebook_runs_end_to_end_on_a_tiny_config(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from PIL import Image

    from captionkit.config import load_config

    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "captionkit tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("CAPTIONKIT_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p))
    work = tmp_path / "work"
    work.mkdir()

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, startup_timeout=60, kernel_name=KERNEL,
                   resources={"metadata": {"path": str(work)}}).execute()  # raises on errors

    cells = _code_cells(nb)
    assert not cells[0]["outputs"], "the install cell ran pip although captionkit imports"
    text = "\n".join(_text(c) for c in cells)
    caption = re.search(r"^caption:\s+(\S.*)$", text, re.M)
    assert caption and re.fullmatch(r"[a-z ]+", caption[1].strip()), text[-2000:]
    pngs = [o["data"]["image/png"] for c in cells for o in c["outputs"]
            if o["output_type"] == "display_data" and "image/png" in o.get("data", {})]
    assert len(pngs) == 2  # one attention figure per mechanism, inline
    for png in pngs:
        with Image.open(io.BytesIO(base64.b64decode(png))) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200

    other = re.search(r'^OTHER_ATTENTION = "(\w+)"', "\n".join(map(_source, cells)), re.M)[1]
    rows = dict(re.findall(r"^(\w+)\s+([0-9.]+\s+[0-9.]+)\s+\d+\s*$", text, re.M))
    assert set(rows) == {"additive", other}, text[-2000:]
    for values in rows.values():
        assert all(0.0 <= float(v) <= 1.0 for v in values.split())  # BLEU-4, hit rate
    for name in ("additive", other):  # each row is its own trained model, in the work folder
        run = work / "runs" / "notebook" / name
        assert (run / "best" / "model.safetensors").is_file()
        assert load_config(run / "config.yaml").decoder.attention == name
