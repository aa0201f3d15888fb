import asyncio
import io
import json
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from captionkit.infer.captioner import load
from captionkit.server import ServeConfig, create_app
from captionkit.server.limits import BodyLimit, sniff


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


def test_health_and_model(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    m = client.get("/v1/model").json()
    assert m["encoder"] == "shapes_cnn" and m["decoder"] == "lstm" and m["vocab_size"] > 4
    assert "metrics" in m and len(m["grid"]) == 2


def test_caption_with_alternatives_and_attention(client, captioner, shapes_root):
    im = Image.open(next(shapes_root.rglob("*.png"))).convert("RGB")
    jpeg = encode(im, "JPEG")
    r = post(client, jpeg, beam=1, attention="true")
    assert r.status_code == 200, r.text
    body = r.json()
    expected = captioner.caption_batch([Image.open(io.BytesIO(jpeg))], 1)[0]
    assert body["caption"] == expected.text and len(body["words"]) > 0
    h, w = body["attention"]["grid"]
    maps = np.array(body["attention"]["maps"])
    assert maps.shape == (len(body["words"]), h * w)
    np.testing.assert_allclose(maps.sum(1), 1.0, atol=1e-3)
    assert body["image"] == {"width": im.width, "height": im.height, "format": "JPEG"}
    beams = post(client, encode(im, "PNG"), beam=3).json()
    assert "attention" not in beams and len(beams["alternatives"]) == 3
    assert beams["alternatives"][0]["caption"] == beams["caption"]
    assert beams["caption"] == captioner.caption_batch([im], 3)[0].text


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
        assert 0 <= b <= 1 and abs(b - (1 - sum(m))) < 1e-3
