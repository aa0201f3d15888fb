import asyncio
import io
import json
import logging
import re
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from captionkit.infer.captioner import load
from captionkit.server import ServeConfig, create_app, log_requests
from captionkit.server.app import ACCESS_LOG
from captionkit.server.limits import FORMATS, BodyLimit, accepted_formats, describe_bytes, sniff


@pytest.fixture(scope="module")
def captioner(random_checkpoint):
    return load(random_checkpoint, precision="fp32")


@pytest.fixture(scope="module")
def client(captioner, random_checkpoint):
    cfg = ServeConfig(max_upload_bytes=200_000, max_pixels=4_000_000, max_side=5_000,
                      max_wait_ms=200, max_batch=8)
    with TestClient(create_app(captioner, cfg, str(random_checkpoint))) as c:
        yield c


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(size=(96, 64), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    arr[:, : size[0] // 2] = (200, 30, 30)  # a red half: something for attention to find
    return Image.fromarray(arr).convert(mode)


def post(client, data: bytes, name="x.jpg", field="image", **form):
    return client.post("/v1/captions", files={field: (name, data, "image/jpeg")},
                       data={k: str(v) for k, v in form.items()})


def error_of(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["status"] == status and body["error"]
    return body["error"]


def test_health_and_model(client, captioner, random_checkpoint):
    assert client.get("/healthz").json() == {"status": "ok"}
    m = client.get("/v1/model").json()
    assert m["encoder"] == "shapes_cnn" and m["decoder"] == "lstm"
    assert m["attention"] == captioner.cfg.decoder.attention == "additive"
    assert m["vocab_size"] == len(captioner.vocab) > 4
    assert m["checkpoint"] == str(random_checkpoint)
    assert m["checkpoint_name"] == random_checkpoint.name
    assert "metrics" in m and len(m["grid"]) == 2
    assert m["accepts"] == FORMATS and "TIFF" in m["accepts"]


def test_caption_with_alternatives_and_attention(client, captioner, shapes_root):
    im = Image.open(next(shapes_root.rglob("*.png"))).convert("RGB")
    jpeg = encode(im, "JPEG")
    r = post(client, jpeg, beam=1, attention="true")
    assert r.status_code == 200, r.text
    body = r.json()
    expected = captioner.caption_batch([Image.open(io.BytesIO(jpeg))], 1)[0]
    assert body["caption"] == expected.text and len(body["words"]) > 0
    assert body["precision"] == expected.precision == "fp32"
    h, w = body["attention"]["grid"]
    maps = np.array(body["attention"]["maps"])
    assert maps.shape == (len(body["words"]), h * w)
    np.testing.assert_allclose(maps.sum(1), 1.0, atol=h * w * 5e-5)  # each rounded to 1e-4
    assert body["image"] == {"width": im.width, "height": im.height, "format": "JPEG"}
    beams = post(client, encode(im, "PNG"), beam=3).json()
    assert "attention" not in beams and len(beams["alternatives"]) == 3
    assert beams["alternatives"][0]["caption"] == beams["caption"]
    assert beams["caption"] == captioner.caption_batch([im], 3)[0].text


def test_attention_is_rounded_to_4_decimals(client, captioner):
    im = photo()
    r = post(client, encode(im, "PNG"), name="a.png", beam=1, attention="true")
    body = r.json()
    maps = body["attention"]["maps"]
    exact = captioner.caption_batch([im], 1)[0].attention.reshape(len(maps), -1)  # (T, h*w)
    np.testing.assert_allclose(maps, exact, atol=5e-5 + 1e-7)  # rounded, not truncated
    assert all(v == round(v, 4) for row in maps for v in row)
    written = re.findall(r"-?\d+\.\d+(?:e-?\d+)?", json.dumps(maps))
    assert written and max(len(x.split(".")[1]) for x in written) <= 4  # as sent on the wire
    scores = [body["score"], *(a["score"] for a in body["alternatives"])]
    assert all(x == round(x, 4) for x in scores)  # as `caption --json` writes them


def test_page_lists_what_the_server_accepts(client):
    """One list: every format the page names (and its file picker offers) is captioned, and
    nothing the server accepts is left off the page."""
    page = client.get("/").text
    assert "{{" not in page
    listed = re.search(r'<span id="formats">([^<]*)</span>', page).group(1)
    assert listed == accepted_formats() and "TIFF" in listed
    accept = re.search(r'<input id="file" type="file" accept="([^"]*)"', page).group(1)
    assert set(accept.split(",")) == {x for f in FORMATS.values()
                                      for x in [f["mime"], *f["extensions"]]}
    for fmt in FORMATS:
        data = encode(photo(), fmt)
        assert sniff(data) == fmt
        r = post(client, data, name=f"x{FORMATS[fmt]['extensions'][0]}")
        assert r.status_code == 200 and r.json()["image"]["format"] == fmt, (fmt, r.text)
    assert re.search(r'<a href="/docs">', page) and 'fetch("/v1/model")' in page


@pytest.mark.parametrize("data,says", [
    (b"hello, I am text", 'text starting "hello, I am text"'),
    (b"%PDF-1.4\n%\xe2\xe3", "a PDF document"),
    (b"PK\x03\x04\x14\x00\x00\x00", "a ZIP archive"),
    (b"\n<!DOCTYPE html><html><body>hi</body></html>", "an HTML page"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "an SVG drawing"),
    (b"\xff\xe4\"y\xf3\xbd\x06\x83\x00", "bytes ff e4 22 79 f3 bd 06 83"),
    (bytes(16), "bytes 00 00 00 00 00 00 00 00"),
])
def test_refusals_describe_the_upload_without_bytes_literals(client, data, says):
    reason = error_of(post(client, data), 415)
    assert says in reason and says in describe_bytes(data)
    assert accepted_formats() in reason
    assert not re.search(r"""b['"]""", reason) and "\\x" not in reason, reason


def test_one_access_log_line_per_request(client, caplog):
    jpeg = encode(photo(), "JPEG")
    with caplog.at_level(logging.INFO, logger=ACCESS_LOG.name):
        assert client.get("/healthz").status_code == 200
        assert post(client, jpeg, beam=1).status_code == 200
        assert client.get("/no/such/page").status_code == 404
        assert post(client, jpeg, beam=0).status_code == 422
        assert post(client, b"\xff\xd8\xff" + bytes(300_000)).status_code == 413  # BodyLimit
        assert client.get("/a%0Ab").status_code == 404  # a newline in the path: still one line
    lines = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOG.name]
    assert len(lines) == 6, lines
    expected = [("GET", "/healthz", "200"), ("POST", "/v1/captions", "200"),
                ("GET", "/no/such/page", "404"), ("POST", "/v1/captions", "422"),
                ("POST", "/v1/captions", "413"), ("GET", "/a%0Ab", "404")]
    for line, (method, path, status) in zip(lines, expected, strict=True):
        m = re.fullmatch(r"(\S+) (\S+) (\d{3}) (\d+\.\d) ms", line)
        assert m and m.groups()[:3] == (method, path, status), line
    assert float(lines[1].split()[-2]) > 0


def test_log_requests_prints_each_request_once(client):
    out, again = io.StringIO(), io.StringIO()
    try:
        log_requests(out)
        log_requests(again)  # replaces the first: never two lines for one request
        client.get("/healthz")
        client.get("/v1/model")
    finally:
        for h in [h for h in ACCESS_LOG.handlers if getattr(h, "captionkit_access", False)]:
            ACCESS_LOG.removeHandler(h)
        ACCESS_LOG.propagate = True
        ACCESS_LOG.setLevel(logging.NOTSET)
    assert out.getvalue() == ""
    lines = again.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith(" ms") and "GET /healthz 200" in lines[0]
    assert "GET /v1/model 200" in lines[1]


@pytest.mark.parametrize("name,make", [
    ("16-bit PNG", lambda: encode(Image.fromarray(
        np.arange(64 * 96, dtype=np.uint16).reshape(64, 96) * 9), "PNG")),
    ("CMYK JPEG", lambda: encode(photo(mode="CMYK"), "JPEG")),
    ("RGBA PNG", lambda: encode(photo(mode="RGBA"), "PNG")),
    ("LA PNG", lambda: encode(photo(mode="LA"), "PNG")),
    ("palette PNG with transparency", lambda: encode(photo(mode="P"), "PNG", transparency=0)),
    ("grey 1x1 GIF", lambda: encode(Image.new("L", (1, 1), 128), "GIF")),
    ("WebP", lambda: encode(photo(), "WEBP")),
    ("BMP", lambda: encode(photo(), "BMP")),
])
def test_odd_but_valid_images_are_captioned(client, name, make):
    r = post(client, make(), name="odd.png")
    assert r.status_code == 200, (name, r.text)
    assert isinstance(r.json()["caption"], str)


def test_exif_rotation_is_applied(client):
    im = photo((96, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    r = post(client, encode(im, "JPEG", exif=exif.tobytes()))
    assert r.status_code == 200 and r.json()["image"]["width"] == 64  # portrait after rotation


def test_bad_uploads_get_the_right_4xx(client):
    jpeg = encode(photo(), "JPEG")
    png = encode(photo(), "PNG")
    assert "empty" in error_of(post(client, b""), 400)
    assert "not a JPEG" in error_of(post(client, b"hello, I am text"), 415)
    tiff = encode(photo(), "TIFF")
    assert "truncated" in error_of(post(client, tiff[: len(tiff) // 2], name="a.tif"), 422)
    error_of(post(client, b"<!doctype html><html><body>hi</body></html>", name="a.jpg"), 415)
    error_of(post(client, b'<svg xmlns="http://www.w3.org/2000/svg"/>', name="a.png"), 415)
    assert "truncated" in error_of(post(client, jpeg[: len(jpeg) // 2]), 422)
    error_of(post(client, png[: len(png) // 2], name="a.png"), 422)
    bomb = encode(Image.new("1", (10_000, 10_000)), "PNG")  # 100 Mpx, a few kB
    assert len(bomb) < 200_000 and "exceeds" in error_of(post(client, bomb), 413)
    wide = encode(Image.new("L", (6_000, 1)), "PNG")  # under the pixel limit, too wide
    assert "longest side" in error_of(post(client, wide), 413)


def test_request_shape_errors(client):
    jpeg = encode(photo(), "JPEG")
    problem = error_of(post(client, jpeg, field="file"), 422)
    assert "image" in problem
    for form in ({"beam": 0}, {"beam": 99}, {"max_len": 0}, {"beam": "three"}):
        error_of(post(client, jpeg, **form), 422)
    error_of(client.post("/v1/captions", json={"image": "x"}), 422)
    error_of(client.get("/v1/captions"), 405)
    error_of(client.get("/no/such/page"), 404)
    big = b"\xff\xd8\xff" + bytes(300_000)
    assert "exceeds the limit" in error_of(post(client, big), 413)


def test_concurrent_requests_are_micro_batched(client):
    jpeg = encode(photo(), "JPEG")
    before = client.get("/v1/model").json()["batches_run"]
    codes = []

    def one():
        codes.append(post(client, jpeg, beam=2).status_code)
    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 8
    batches = client.get("/v1/model").json()["batches_run"] - before
    assert batches < 8  # requests shared forward passes


def test_slow_body_times_out_with_408():
    async def app(scope, receive, send):  # never reached
        raise AssertionError("the app must not see a body that never arrived")

    async def slow_receive():
        await asyncio.sleep(5)
        return {"type": "http.request", "body": b"", "more_body": False}
    sent = []

    async def send(msg):
        sent.append(msg)
    scope = {"type": "http", "method": "POST", "headers": []}
    asyncio.run(BodyLimit(app, 100, 0.05)(scope, slow_receive, send))
    assert sent[0]["status"] == 408 and b"not received" in sent[1]["body"]


def test_pages_use_no_external_resources(client):
    page = client.get("/").text
    assert "<html" in page and "/v1/captions" in page
    docs = client.get("/docs").text
    assert "/v1/captions" in docs and "/v1/model" in docs
    for text in (page, docs):
        assert "https://" not in text and "cdn" not in text.lower()
    assert "/v1/captions" in json.dumps(client.get("/openapi.json").json())


def test_sniff_formats():
    assert sniff(encode(photo(), "JPEG")) == "JPEG"
    assert sniff(encode(photo(), "WEBP")) == "WEBP"
    assert sniff(b"GIF89a...") == "GIF" and sniff(b"%PDF-1.4") is None


def test_adaptive_attention_answers_with_beta_per_word(shapes_root, tmp_path):
    """A model with the adaptive (sentinel) mechanism: the response carries each word's beta,
    1 - the sum of its map (both rounded), beside the heatmaps the page draws."""
    import torch

    from captionkit.checkpoint import save_checkpoint
    from captionkit.config import Config
    from captionkit.data import load_records
    from captionkit.data.vocab import Vocabulary
    from captionkit.models.captioner import build_model

    torch.manual_seed(0)
    cfg = Config().override([f"data.root={shapes_root}", "decoder.embed_dim=16",
                             "decoder.hidden_dim=32", "decoder.attention_dim=16",
                             "decoder.attention=adaptive"])
    vocab = Vocabulary.build(c for r in load_records(cfg.data) for c in r.captions)
    ckpt = save_checkpoint(tmp_path / "ckpt", build_model(cfg, len(vocab)), cfg, vocab)
    with TestClient(create_app(load(ckpt, precision="fp32"), ServeConfig(), str(ckpt))) as c:
        body = post(c, encode(photo(), "JPEG"), beam=1, attention="true").json()
    assert body["words"] and len(body["beta"]) == len(body["words"])
    for b, m in zip(body["beta"], body["attention"]["maps"], strict=True):
        assert 0 <= b <= 1 and b == round(b, 4)
        assert abs(b - (1 - sum(m))) <= (len(m) + 1) * 5e-5 + 1e-9  # each rounded to 1e-4
