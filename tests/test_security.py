"""What docs/security.md promises, checked: no pickle loading anywhere, no remote fetching by
the server or the image loader, loopback by default."""

import ast
from pathlib import Path

import pytest

from captionkit.cli import build_parser
from captionkit.data.images import load_image
from captionkit.errors import ImageLoadError
from captionkit.server import ServeConfig

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("src", "benchmarks", "tests") for p in (ROOT / d).rglob("*.py"))


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _kw(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_unpickles(path):
    for node, func in _calls(path):
        where = f"{path.relative_to(ROOT)}:{node.lineno}: {func}"
        if func.endswith("torch.load"):
            wo = _kw(node, "weights_only")
            assert isinstance(wo, ast.Constant) and wo.value is True, where
        assert func not in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load",
                            "joblib.load", "torch.jit.load", "marshal.loads", "eval",
                            "exec"), where
        if func in ("np.load", "numpy.load"):
            ap = _kw(node, "allow_pickle")
            assert ap is None or (isinstance(ap, ast.Constant) and ap.value is False), where
        if func == "yaml.load":
            raise AssertionError(f"{where}: use yaml.safe_load")


def test_server_and_image_loading_fetch_nothing_remote():
    for path in [*(ROOT / "src/captionkit/server").rglob("*.py"),
                 ROOT / "src/captionkit/data/images.py", ROOT / "src/captionkit/infer/captioner.py"]:
        text = path.read_text()
        for name in ("urllib", "urlopen", "requests", "httpx", "socket", "http.client"):
            assert f"import {name}" not in text and f"from {name}" not in text, (path, name)
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image("http://127.0.0.1:9/photo.jpg")  # a URL is only ever a (missing) path
    page = (ROOT / "src/captionkit/server/static/index.html").read_text()
    assert "innerHTML" not in page and "https://" not in page  # text only, no CDN


def test_defaults_are_conservative():
    args = build_parser().parse_args(["serve", "--checkpoint", "x"])
    assert args.host == "127.0.0.1"
    cfg = ServeConfig()
    assert cfg.max_upload_bytes <= 16 * 2**20 and cfg.max_pixels <= 100_000_000
    assert cfg.request_timeout_s <= 60 and cfg.answer_timeout_s <= 120
    assert cfg.max_queue <= 1024
