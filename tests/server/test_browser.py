"""The web page in a real headless Chromium: upload a photo, see the caption, hover a word and
see the heatmap; the model it names, re-captioning on a new beam size, errors and TIFF. The
screenshot is kept in ``$CAPTIONKIT_ARTIFACTS`` (default test-artifacts/).
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
RECORD_BEAMS = """window.beamsSent = []; const realFetch = window.fetch;
  window.fetch = (url, opts) => {
    if (String(url).endsWith('/v1/captions')) window.beamsSent.push(opts.body.get('beam'));
    return realFetch(url, opts); };"""


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
    app = create_app(load(checkpoint, precision="fp32"), ServeConfig(), str(checkpoint))
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


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, server):
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.add_init_script(RECORD_BEAMS)
    page.goto(server)
    yield page
    page.close()


def _beams(page) -> list[str]:
    """The beam size each caption request so far asked for."""
    return page.evaluate("() => window.beamsSent")


def _photo_shows(page) -> bool:
    return page.locator("#photo").evaluate(
        "i => !i.hidden && i.getBoundingClientRect().width > 0 && i.naturalWidth > 0")


def _no_photo(page) -> bool:  # no image, so no broken-image icon either
    return page.locator("#photo").evaluate(
        "i => i.hidden && !i.hasAttribute('src') && i.getBoundingClientRect().width === 0")


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


def test_page_names_the_model_and_links_the_api(page, random_checkpoint):
    page.wait_for_function("() => document.getElementById('model-info').textContent"
                           ".startsWith('Model:')", timeout=10_000)
    info = page.locator("#model-info").text_content()
    for part in ("shapes_cnn encoder", "lstm decoder with additive attention",
                 "-word vocabulary", f"checkpoint {random_checkpoint.name}"):
        assert part in info, info
    assert page.locator("a[href='/docs']").count() == 1
    assert "TIFF" in page.locator("#formats").text_content()


def test_changing_the_beam_size_recaptions_the_photo(page, tmp_path):
    photo = tmp_path / "shapes.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 96, 3), np.uint8)).save(photo)
    page.select_option("#beam", "1")
    assert _beams(page) == []  # no photo yet: nothing to re-caption
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#caption .word", timeout=60_000)
    assert page.locator("#alts li").count() == 0 and _beams(page) == ["1"]
    page.select_option("#beam", "5")
    page.wait_for_function("() => document.getElementById('status').textContent"
                           ".includes('beam size 5')", timeout=60_000)
    assert _beams(page) == ["1", "5"]
    assert page.locator("#alts li").count() == 4  # the other 4 of the 5 beams
    if page.locator("#caption .word").count() == 0:  # the untrained model's best: no words
        assert "empty" in page.locator("#caption").text_content()
    assert _photo_shows(page)  # the same photo, still shown


def test_an_error_leaves_no_broken_image_and_no_bytes_literal(page, tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "notes.jpg"
    Image.fromarray(np.full((64, 96, 3), 90, np.uint8)).save(good)
    bad.write_text("hello, I am text and not a photo")
    page.select_option("#beam", "1")  # the untrained model's longer beams end at once
    page.set_input_files("#file", str(good))
    page.wait_for_selector("#caption .word", timeout=60_000)
    assert _photo_shows(page)
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#status.error", timeout=60_000)
    message = page.locator("#status").text_content()
    assert "(415)" in message and 'text starting "hello, I am text' in message, message
    assert "b'" not in message and "\\x" not in message
    assert _no_photo(page) and page.locator("#caption .word").count() == 0
    page.select_option("#beam", "3")  # nothing to re-caption after a refusal
    page.wait_for_timeout(300)
    assert _beams(page) == ["1", "1"]


def test_a_tiff_is_captioned_even_where_the_browser_cannot_show_it(page, tmp_path):
    tiff = tmp_path / "scan.tif"
    Image.fromarray(np.full((64, 96, 3), 200, np.uint8)).save(tiff, "TIFF")
    page.select_option("#beam", "1")
    page.set_input_files("#file", str(tiff))
    page.wait_for_selector("#caption .word", timeout=60_000)
    page.wait_for_function("() => !document.getElementById('photo').hasAttribute('src') || "
                           "document.getElementById('photo').naturalWidth > 0", timeout=10_000)
    if not _photo_shows(page):  # Chromium draws no TIFF: say so, show no broken image
        assert _no_photo(page)
        assert "cannot display scan.tif" in page.locator("#photo-note").text_content()

