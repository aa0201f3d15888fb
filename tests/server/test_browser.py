"""The web page in a real headless Chromium: upload a photo, see the caption, hover a word and
see the heatmap. The screenshot is kept in ``$CAPTIONKIT_ARTIFACTS`` (default test-artifacts/).
Chromium comes from Debian (``scripts/install_chromium.sh``, run by ``make test``); without it
the test is skipped, unless ``CAPTIONKIT_REQUIRE_BROWSER=1`` (set by CI) makes that a failure."""

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image

from captionkit.infer.captioner import load
from captionkit.server import ServeConfig, create_app

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT.parent / "shared" / "photos"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HEAT_ALPHA = """() => { const c = document.getElementById('heat');
  if (!c.width || !c.height) return 0;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = 0; for (let i = 3; i < d.length; i += 4) s += d[i]; return s; }"""


@pytest.fixture(scope="module")
def server(request):
    if CHROMIUM is None:
        if os.environ.get("CAPTIONKIT_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is required (CAPTIONKIT_REQUIRE_BROWSER=1) but not installed")
        pytest.skip("chromium is not installed (scripts/install_chromium.sh)")
    checkpoint = request.getfixturevalue("random_checkpoint")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(load(checkpoint, precision="fp32"), ServeConfig())
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(10)


def test_upload_caption_and_heatmap_in_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    photos = sorted(PHOTOS.glob("*.jpg")) if PHOTOS.is_dir() else []
    photo = photos[0] if photos else tmp_path / "fixture.jpg"
    if not photos:
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), np.uint8)).save(photo)
    artifacts = Path(os.environ.get("CAPTIONKIT_ARTIFACTS", ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.goto(server)
        page.select_option("#beam", "1")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#caption .word", timeout=60_000)
        words = page.locator("#caption .word")
        assert words.count() > 0 and page.locator("#photo").evaluate("i => i.naturalWidth") > 0
        assert page.evaluate(HEAT_ALPHA) == 0  # nothing shown until a word is pointed at
        words.first.hover()
        page.wait_for_function(HEAT_ALPHA, timeout=10_000)
        assert page.evaluate(HEAT_ALPHA) > 0
        page.screenshot(path=str(artifacts / "serve_page.png"), full_page=True)
        words.first.blur()
        page.mouse.move(0, 0)
        browser.close()
    assert (artifacts / "serve_page.png").stat().st_size > 10_000
