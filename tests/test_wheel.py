"""The wheel a user installs: built from this checkout, it carries every module, the presets and
the web page; installed into a fresh virtual environment outside the repository, its
``captionkit`` command works from an empty folder (``--version``, ``list-encoders``, a 1-epoch
demo from the ``shapes_demo`` preset by name, ``caption`` with the demo's checkpoint) and imports
the installed copy, not ``src/``.

The new environment reuses this one's torch and friends through a ``.pth`` line (its
``site-packages`` as a plain path: the editable install's own ``.pth`` there is not processed,
so ``src/`` stays out of ``sys.path``); the wheel goes in before that line exists, with
``--no-deps --no-index``. Nothing is written into the checkout: the wheel is built from a copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import venv
import zipfile
from pathlib import Path

import pytest

from captionkit.config import list_presets

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
VERSION = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)[1]
TINY_DEMO = ["data.root=data", "data.num_train=32", "data.num_dev=8", "data.num_test=8",
             "data.seed=1", "decoder.embed_dim=16", "decoder.hidden_dim=32",
             "decoder.attention_dim=16", "train.epochs=1", "train.batch_size=8",
             "train.eval_max_len=8", "train.device=cpu"]
TIMES: dict[str, float] = {}


def _run(cmd: list, cwd: Path, step: str, env: dict | None = None, timeout: int = 300) -> str:
    """Run ``cmd``, time it as ``step``, fail with its output unless it exits 0; its stdout."""
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    TIMES[step] = time.perf_counter() - t0
    assert proc.returncode == 0, f"{step} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built offline from a copy of the sources (no build/ in the checkout)."""
    src = tmp_path_factory.mktemp("sources")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "configs", src / "configs", ignore=skip)
    shutil.copytree(ROOT / "src", src / "src", symlinks=True, ignore=skip)  # configs stays a link
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "--disable-pip-version-check", "-q", "-w", out, src], src, "build wheel")
    (built,) = out.glob("captionkit-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv (outside the repository) with the wheel installed; its bin folder."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    t0 = time.perf_counter()
    venv.EnvBuilder(with_pip=False).create(env_dir)
    TIMES["create venv"] = time.perf_counter() - t0
    python = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          "--disable-pip-version-check", "-q", wheel], env_dir, "install wheel")
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     env_dir, "find site-packages").strip())
    (site / "reuse_torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir / "bin"


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1"}


def test_the_wheel_carries_the_modules_presets_and_web_page(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "src" / "captionkit"
    modules = {f"captionkit/{p.relative_to(package)}" for p in package.rglob("*.py")}
    assert modules - names == set(), "modules missing from the wheel"
    presets = {f"captionkit/configs/{name}.yaml" for name in list_presets()}
    assert len(presets) >= 6 and presets <= names
    static = {f"captionkit/server/static/{p.name}" for p in (package / "server/static").iterdir()}
    assert "captionkit/server/static/index.html" in static and static <= names
    dist_info = f"captionkit-{VERSION}.dist-info/"
    assert all(n.startswith(("captionkit/", dist_info)) for n in names), "stray top-level files"


def test_the_installed_command_works_from_an_empty_folder(installed, tmp_path):
    work, env = tmp_path / "empty", _clean_env()
    work.mkdir()
    t0 = time.perf_counter()
    where = _run([installed / "python", "-c", "import captionkit; print(captionkit.__file__)"],
                 work, "import", env)
    assert Path(where.strip()).is_relative_to(installed.parent), where  # the wheel's copy
    assert not Path(where.strip()).is_relative_to(ROOT), where
    cli = installed / "captionkit"
    assert _run([cli, "--version"], work, "--version", env).strip() == f"captionkit {VERSION}"
    assert "shapes_cnn" in _run([cli, "list-encoders"], work, "list-encoders", env)
    _run([cli, "demo", "--config", "shapes_demo", "--out", "demo", "--quiet",
          *[a for kv in TINY_DEMO for a in ("--set", kv)]], work, "demo (1 epoch)", env)
    assert (work / "demo" / "demo_metrics.json").is_file()
    image = sorted((work / "data" / "images").glob("test_*.png"))[0]
    out = _run([cli, "caption", image, "--checkpoint", "demo/best"], work, "caption", env)
    assert image.name in out and len(out.strip().splitlines()) == 1
    TIMES["commands in the venv"] = time.perf_counter() - t0
    print("\nwheel test times: " + ", ".join(f"{k} {v:.1f}s" for k, v in TIMES.items()))
