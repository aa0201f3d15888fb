"""Progress bars behave in logs: drawn on a terminal, nothing at all when output is redirected."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import captionkit.progress
from captionkit.progress import bar, interactive

SRC = Path(__file__).resolve().parents[1] / "src"


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_interactive_asks_the_stream():
    assert interactive(_Stream(tty=True)) and not interactive(_Stream(tty=False))
    assert not interactive(object())  # no isatty at all: not a terminal


def test_no_bar_off_a_terminal(capsys):
    assert not interactive()  # pytest captures stderr: not a terminal
    b = bar(range(50), "work")
    assert list(b) == list(range(50)) and b.disable  # still iterates
    b.set_postfix(loss=1.0)
    b.update(1)  # no-ops
    out, err = capsys.readouterr()
    assert out == err == ""


def test_bar_drawn_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(captionkit.progress, "interactive", lambda stream=None: True)
    assert list(bar(range(50), "work", mininterval=0)) == list(range(50))
    err = capsys.readouterr().err
    assert "work" in err and "50/50" in err and "\r" in err
    assert list(bar(range(5), "off", enabled=False)) == list(range(5))  # asked for no bar
    assert capsys.readouterr().err == ""


def test_demo_log_has_no_carriage_returns_and_few_lines(tmp_path):
    sets = [f"data.root={tmp_path / 'data'}", "data.num_train=32", "data.num_dev=8",
            "data.num_test=8", "decoder.embed_dim=16", "decoder.hidden_dim=32",
            "decoder.attention_dim=16", "train.epochs=2", "train.batch_size=8",
            "train.eval_max_len=8", "train.device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "captionkit", "demo", "--out", str(tmp_path / "out"),
           *[a for kv in sets for a in ("--set", kv)]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)  # pipes, not a terminal: what `make demo > log` sees
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stdout and "\r" not in proc.stderr
    lines = (proc.stdout + proc.stderr).splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 2  # one line per epoch
    assert len(lines) < 60, "\n".join(lines)
    assert (tmp_path / "out" / "demo_metrics.json").is_file()
