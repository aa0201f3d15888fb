"""The FastAPI app: ``POST /v1/captions``, ``GET /v1/model``, ``GET /healthz``, the web page at
``/`` and an API reference at ``/docs`` (served from here: no external CDN)."""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoint's annotations,
# which refer to this closure's limits (cfg.max_beam), at route creation.
import asyncio
import html
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Annotated

import torch
from fastapi import FastAPI, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from captionkit.infer.captioner import BaseCaptioner
from captionkit.server.batching import MicroBatcher
from captionkit.server.limits import BodyLimit, RequestError, decode_upload


@dataclass(frozen=True)
class ServeConfig:
    """Server limits and batching."""

    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = 50_000_000  # refused before decoding (decompression bombs)
    max_side: int = 20_000
    request_timeout_s: float = 30.0  # the whole request body must arrive within this
    answer_timeout_s: float = 60.0  # queue + model; past it the request gets 503
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_beam: int = 8
    max_words: int = 50


def create_app(captioner: BaseCaptioner, cfg: ServeConfig | None = None, checkpoint: str = ""):
    """The ASGI app serving ``captioner``: any :class:`captionkit.infer.captioner.BaseCaptioner`
    (the PyTorch ``Captioner`` or the onnxruntime ``OnnxCaptioner``)."""
    cfg = cfg or ServeConfig()

    def run_batch(key, pixels):
        beam, max_len = key
        x = torch.stack(pixels)  # (B, 3, S, S)
        return captioner.caption_pixels(x, beam_size=beam, max_len=max_len)

    batcher = MicroBatcher(run_batch, cfg.max_batch, cfg.max_wait_ms / 1000, cfg.max_queue)

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="captionkit", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, description="Image captioning with attention maps.")
    app.state.batcher, app.state.config = batcher, cfg
    _add_errors(app)
    _add_pages(app)
    _add_api(app, captioner, cfg, batcher, checkpoint)
    return BodyLimit(app, cfg.max_upload_bytes + 64 * 1024, cfg.request_timeout_s)


def _add_api(app: FastAPI, captioner: BaseCaptioner, cfg: ServeConfig, batcher: MicroBatcher,
             checkpoint: str) -> None:
    @app.get("/healthz", summary="liveness")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/model", summary="the loaded model: encoder, decoder, vocabulary, metrics")
    async def model() -> dict:
        mc = captioner.cfg
        return {"checkpoint": checkpoint, "encoder": mc.encoder.name,
                "decoder": mc.decoder.name, "vocab_size": len(captioner.vocab),
                "grid": list(captioner.grid), "image_size": captioner.preprocess.size,
                "epoch": captioner.meta.get("epoch"), "metrics": captioner.meta.get("metrics", {}),
                "limits": asdict(cfg), "batches_run": batcher.batches}

    @app.post("/v1/captions", summary="caption one image (multipart field 'image')")
    async def captions(
            image: Annotated[UploadFile, File(description="JPEG, PNG, WebP, GIF, BMP or TIFF")],
            beam: Annotated[int, Form(ge=1, le=cfg.max_beam)] = 3,
            max_len: Annotated[int, Form(ge=1, le=cfg.max_words)] = 20,
            attention: Annotated[bool, Form()] = False) -> dict:
        t0 = time.perf_counter()
        data = await image.read()
        pil, fmt = await run_in_threadpool(decode_upload, data, image.filename or "upload",
                                           cfg.max_pixels, cfg.max_side)
        x = await run_in_threadpool(captioner.preprocess, pil)  # (3, S, S)
        t1 = time.perf_counter()
        try:
            res = await asyncio.wait_for(batcher.submit((beam, max_len), x),
                                         cfg.answer_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(503, "the model did not answer in time; retry") from None
        t2 = time.perf_counter()
        return _response(res, pil, fmt, attention, captioner.grid,
                         {"decode": (t1 - t0) * 1e3, "model": (t2 - t1) * 1e3})


def _response(res, pil, fmt: str, attention: bool, grid, timing: dict) -> dict:
    out = {"caption": res.text, "score": res.score, "words": res.words,
           "alternatives": [{"caption": t, "score": s} for t, s in res.alternatives],
           "image": {"width": pil.width, "height": pil.height, "format": fmt},
           "timing_ms": {k: round(v, 2) for k, v in timing.items()}}
    if attention:
        maps = res.attention.reshape(len(res.words), grid[0] * grid[1])  # (T, h*w)
        out["attention"] = {"grid": list(grid), "maps": maps.round(5).tolist()}
    if res.beta is not None:  # adaptive attention: the sentinel's weight per word
        out["beta"] = [round(b, 4) for b in res.beta]
    return out


def _add_errors(app: FastAPI) -> None:
    def error(status: int, reason: str, **extra) -> JSONResponse:
        return JSONResponse({"error": reason, "status": status, **extra}, status_code=status)

    @app.exception_handler(RequestError)
    async def request_error(_req, e: RequestError):
        return error(e.status, e.reason)

    @app.exception_handler(HTTPException)
    async def http_error(_req, e: HTTPException):
        return error(e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_req, e: RequestValidationError):
        problems = [{"field": ".".join(str(p) for p in err["loc"][1:]) or "body",
                     "problem": err["msg"]} for err in e.errors()]
        reason = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
        return error(422, f"invalid request: {reason}", problems=problems)


def _add_pages(app: FastAPI) -> None:
    page = resources.files("captionkit.server").joinpath("static/index.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> str:
        return api_reference(app.openapi())


def api_reference(spec: dict) -> str:
    """A plain HTML API reference from the OpenAPI schema (also at ``/openapi.json``)."""
    rows = []
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            params = [p["name"] for p in op.get("parameters", [])]
            body = op.get("requestBody", {}).get("content", {})
            for media in body.values():
                ref = media.get("schema", {}).get("$ref", "")
                schema = spec.get("components", {}).get("schemas", {}).get(
                    ref.rsplit("/", 1)[-1], {})
                params += [f"{k} (form)" for k in schema.get("properties", {})]
            rows.append(f"<tr><td><code>{method.upper()} {html.escape(path)}</code></td>"
                        f"<td>{html.escape(op.get('summary', ''))}</td>"
                        f"<td>{html.escape(', '.join(params))}</td></tr>")
    return ("<!doctype html><html lang=en><meta charset=utf-8><title>captionkit API</title>"
            "<style>body{font:16px system-ui;margin:2rem}td{padding:.3rem 1rem;"
            "border-bottom:1px solid #ddd}</style><h1>captionkit API</h1>"
            "<p>Machine-readable: <a href=/openapi.json>/openapi.json</a>. Errors are JSON "
            "<code>{\"error\": reason, \"status\": code}</code>.</p><table><tr><th>endpoint</th>"
            "<th>what</th><th>parameters</th></tr>" + "".join(rows) + "</table></html>")
