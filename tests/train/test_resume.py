"""Exact resume: SIGKILL mid-epoch (and mid-save), resume, and end bitwise-equal to a run
that was never interrupted; mismatched resumes and NaN losses are refused with reasons."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from captionkit.cli import main
from captionkit.errors import CaptionKitError, NonFiniteLossError
from captionkit.train.fit import fit

SRC = str(Path(__file__).resolve().parents[2] / "src")

CHILD = textwrap.dedent("""
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from captionkit.config import load_config
    from captionkit.train import fit as engine, loop, resume
    cfg = load_config(sys.argv[1])
    kill_at, mode = int(sys.argv[2]), sys.argv[3]
    real_save, real_replace = resume.save_resume, os.replace
    def save_then_die(run_dir, model, opt, progress, fp):
        if mode == "mid-save" and progress.step == kill_at:
            def replace(src, dst):  # die just before the pointer would switch
                if str(dst).endswith("resume.json"):
                    os.kill(os.getpid(), signal.SIGKILL)
                real_replace(src, dst)
            resume.os.replace = replace
        out = real_save(run_dir, model, opt, progress, fp)
        if progress.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    loop.save_resume = save_then_die
    engine.fit(cfg, progress=False)
""")


def _cfg(tiny_config, out: Path, extra: tuple[str, ...] = ()):
    return tiny_config.override(["train.epochs=2", "train.checkpoint_every=1",
                                 f"train.out_dir={out}", "decoder.dropout=0.3", *extra])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last" / "model.safetensors"))


@pytest.fixture()
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# the default model, and hard attention on updown (sampled regions, a REINFORCE baseline)
HARD = ("decoder.name=updown", "decoder.attention=hard")


@pytest.mark.parametrize("kill_at,mode,extra", [(6, "after-save", ()), (3, "mid-save", ()),
                                                (5, "after-save", HARD)])
def test_sigkill_then_resume_is_bitwise_identical(tiny_config, tmp_path, one_thread, kill_at,
                                                  mode, extra):
    ref = fit(_cfg(tiny_config, tmp_path / "ref", extra), progress=False)
    assert ref.history[-1]["step"] == 8  # 2 epochs x 4 batches; kill points are mid-epoch
    cfg = _cfg(tiny_config, tmp_path / "run", extra)
    cfg.save(tmp_path / "cfg.yaml")
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "cfg.yaml"),
                            str(kill_at), mode], env=env, capture_output=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    pointer = (tmp_path / "run" / "resume.json").read_text()
    expect = kill_at if mode == "after-save" else kill_at - 1  # mid-save: the previous point
    assert f'"step": {expect}' in pointer
    fit(cfg, progress=False, resume=True)
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "run")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_config_is_refused(tiny_config, tmp_path, capsys):
    cfg = _cfg(tiny_config, tmp_path / "run").override(["train.max_steps=2"])
    fit(cfg, progress=False)
    rc = main(["train", "--resume", str(tmp_path / "run"), "--set", "train.lr=0.5",
               "--set", f"data.root={cfg.data.root}", "--set", "train.max_steps=2"])
    err = capsys.readouterr().err
    assert rc == 2 and "train.lr: 0.001 -> 0.5" in err


def test_resume_with_changed_data_is_refused(tiny_config, tmp_path):
    cfg = _cfg(tiny_config, tmp_path / "run").override(["train.max_steps=2"])
    fit(cfg, progress=False)
    with pytest.raises(CaptionKitError, match="data changed.*train_images: run started with 32"):
        fit(cfg.override(["data.num_train=24"]), progress=False, resume=True)


def test_nan_loss_names_the_step_and_a_checkpoint_before_it(tiny_config, tmp_path,
                                                            monkeypatch):
    import captionkit.train.stages as stages

    real = stages.caption_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, ce = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan"), ce) if calls["n"] == 3 else (loss, ce)

    monkeypatch.setattr(stages, "caption_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"at step 2.*resume-000000002") as e:
        fit(_cfg(tiny_config, tmp_path / "run"), progress=False)
    assert e.value.step == 2
