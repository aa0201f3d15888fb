"""The FastAPI app: ``POST /v1/captions``, ``GET /v1/model``, ``GET /healthz``, the web page at
``/`` and an API reference at ``/docs`` (served from here: no external CDN)."""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoint's annotations,
# which refer to this closure's limits (cfg.max_beam), at route creation.
import asyncio
import html
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from fastapi import FastAPI, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from captionkit.infer.captioner import BaseCaptioner
from captionkit.models.decoders import DECODERS
from captionkit.server.batching import MicroBatcher
from captionkit.server.limits import (
    FORMATS,
    BodyLimit,
    RequestError,
    accept_attribute,
    accepted_formats,
    decode_upload,
)

ACCESS_LOG = logging.getLogger("captionkit.server.access")
DIGITS = 4  # decimals of attention maps, beta and scores in responses (as `caption --json`)


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
    return AccessLog(BodyLimit(app, cfg.max_upload_bytes + 64 * 1024, cfg.request_timeout_s))


def model_info(captioner: BaseCaptioner, checkpoint: str) -> dict:
    """What ``GET /v1/model`` says about the model (the page shows it): encoder, decoder, its
    attention mechanism, vocabulary size, grid, input size, checkpoint and its scores."""
    mc = captioner.cfg
    fields = DECODERS.info(mc.decoder.name).get("fields", ())
    attention = mc.decoder.attention if "attention" in fields else "multi-head (transformer)"
    return {"checkpoint": checkpoint, "checkpoint_name": Path(checkpoint).name,
            "encoder": mc.encoder.name, "decoder": mc.decoder.name,
            "attention": attention, "vocab_size": len(captioner.vocab),
            "grid": list(captioner.grid), "image_size": captioner.preprocess.size,
            "epoch": captioner.meta.get("epoch"), "metrics": captioner.meta.get("metrics", {})}


def _add_api(app: FastAPI, captioner: BaseCaptioner, cfg: ServeConfig, batcher: MicroBatcher,
             checkpoint: str) -> None:
    @app.get("/healthz", summary="liveness")
    async def healthz() -> dict:
        return {"status": "ok"}

    info = model_info(captioner, checkpoint)

    @app.get("/v1/model", summary="the loaded model: encoder, decoder, attention, vocabulary, "
             "checkpoint, metrics; the accepted image formats and the server's limits")
    async def model() -> dict:
        return {**info, "accepts": FORMATS, "limits": asdict(cfg),
                "batches_run": batcher.batches}

    @app.post("/v1/captions", summary="caption one image (multipart field 'image')")
    async def captions(
            image: Annotated[UploadFile, File(description=accepted_formats())],
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
    out = {"caption": res.text, "score": round(res.score, DIGITS), "words": res.words,
           "alternatives": [{"caption": t, "score": round(s, DIGITS)} for t, s in res.alternatives],
           "precision": res.precision,  # the decoder arithmetic (fp32 by default)
           "image": {"width": pil.width, "height": pil.height, "format": fmt},
           "timing_ms": {k: round(v, 2) for k, v in timing.items()}}
    if attention:
        maps = res.attention.reshape(len(res.words), grid[0] * grid[1])  # (T, h*w)
        maps = maps.astype(np.float64).round(DIGITS)  # float32 would print 0.0204000007
        out["attention"] = {"grid": list(grid), "maps": maps.tolist()}
    if res.beta is not None:  # adaptive attention: the sentinel's weight per word
        out["beta"] = [round(b, DIGITS) for b in res.beta]
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
    page = (page.replace("{{FORMATS}}", html.escape(accepted_formats()))
            .replace("{{ACCEPT}}", html.escape(accept_attribute())))

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


class AccessLog:
    """ASGI wrapper: one line per HTTP request, ``GET /v1/model 200 1.8 ms`` (method, path,
    status, milliseconds to the end of the response), at INFO on the
    ``captionkit.server.access`` logger. Outermost, so refusals by :class:`BodyLimit` are
    logged too; ``-`` for the status of a request that got no response (client gone)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), "-"

        async def noting_send(msg) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)
        try:
            await self.app(scope, receive, noting_send)
        finally:
            path = "".join(c if c.isprintable() and c != " " else f"%{ord(c):02X}"
                           for c in scope["path"])  # one line, whatever the path holds
            ACCESS_LOG.info("%s %s %s %.1f ms", scope["method"], path, status,
                            (time.perf_counter() - t0) * 1e3)


def log_requests(stream=None) -> logging.Handler:
    """Print the access log to ``stream`` (default stderr), one timestamped line per request,
    as ``captionkit serve`` does (with uvicorn's own access log off). Calling it again
    replaces the handler, so a request is never printed twice."""
    for old in [h for h in ACCESS_LOG.handlers if getattr(h, "captionkit_access", False)]:
        ACCESS_LOG.removeHandler(old)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    handler.captionkit_access = True
    ACCESS_LOG.addHandler(handler)
    ACCESS_LOG.setLevel(logging.INFO)
    ACCESS_LOG.propagate = False  # printed here only, even if the root logger prints too
    return handler
