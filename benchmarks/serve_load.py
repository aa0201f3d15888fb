"""Load test of ``captionkit serve`` on loopback: throughput, latency, errors, server memory.

    python benchmarks/serve_load.py --checkpoint runs/bench_flickr8k_quality/best \\
        --requests 2000 --concurrency 16 --images ../shared/photos

Starts the server as a user would (``python -m captionkit serve``), sends ``--requests``
captioning requests (multipart JPEG uploads, beam ``--beam``) from ``--concurrency`` clients
at once, cycling over the photos in ``--images`` (random 500x375 JPEGs when none are given),
and samples the server's resident memory. ``--sweep 1,4`` first runs short rounds at lower
concurrency to show throughput growing with it (micro-batching). Ends with
``requests=<n> errors=<n> p99_ms=<x>`` (errors: any answer other than 200, or no answer).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def load_images(folder: str | None, count: int = 8) -> list[bytes]:
    """JPEG bytes of the photos in ``folder``, or ``count`` random Flickr-sized JPEGs."""
    if folder and Path(folder).is_dir():
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        if files:
            return [p.read_bytes() for p in files]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (375, 500, 3), np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def start_server(checkpoint: str, port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "captionkit", "serve", "--checkpoint", checkpoint,
           "--port", str(port), *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
    proc.kill()
    raise SystemExit("server did not start")


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_load(url: str, images: list[bytes], requests: int, concurrency: int,
                   beam: int, pid: int) -> dict:
    """Send ``requests`` uploads from ``concurrency`` clients; latencies, codes, memory."""
    latencies, codes, peak = [], {}, [0.0]
    todo = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        for i in todo:
            t0 = time.perf_counter()
            try:
                r = await http.post(url, files={"image": (f"{i}.jpg", images[i % len(images)],
                                                          "image/jpeg")},
                                    data={"beam": str(beam)})
                code = r.status_code
            except httpx.HTTPError as e:
                code = type(e).__name__
            latencies.append((time.perf_counter() - t0) * 1000)
            codes[code] = codes.get(code, 0) + 1

    async def sample_memory() -> None:
        while True:
            peak[0] = max(peak[0], rss_mib(pid))
            await asyncio.sleep(0.1)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        sampler = asyncio.create_task(sample_memory())
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        sampler.cancel()
    q = statistics.quantiles(latencies, n=100)
    return {"requests": requests, "concurrency": concurrency, "seconds": wall,
            "throughput": requests / wall, "p50": statistics.median(latencies), "p90": q[89],
            "p99": q[98], "errors": requests - codes.get(200, 0), "codes": codes,
            "peak_rss_mib": peak[0]}


async def slow_client(port: int, hold_s: float) -> str:
    """Declare a 100 kB body and trickle it a byte a second: the server must answer 408 (or
    close) by its upload time limit, not wait for us."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data;"
                 b" boundary=b\r\nContent-Length: 100000\r\n\r\n")
    try:
        while time.perf_counter() - t0 < hold_s:
            writer.write(b"x")
            await writer.drain()
            try:
                line = await asyncio.wait_for(reader.readline(), 1.0)
            except asyncio.TimeoutError:
                continue
            return f"{line.split()[1].decode() if line else 'closed'}"
    except ConnectionError:
        return "closed"
    finally:
        writer.close()
    return "held"


async def oversized(port: int, size: int, chunked: bool) -> str:
    """A body over the limit, declared (Content-Length) or streamed (chunked): 413 expected.
    The answer is read while the body is still being sent (the server may close early)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\n")
    head += b"Transfer-Encoding: chunked\r\n\r\n" if chunked else \
        f"Content-Length: {size}\r\nExpect: 100-continue\r\n\r\n".encode()
    answer = asyncio.create_task(reader.readline())
    if not chunked:  # a polite client waits for 100 Continue (or the refusal) first
        writer.write(head)
        await asyncio.wait({answer}, timeout=2)
        head = b""
    chunk = b"x" * 65536
    try:
        writer.write(head)
        for _ in range(size // len(chunk)):
            if answer.done():
                break
            writer.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n" if chunked else chunk)
            await writer.drain()
    except ConnectionError:
        pass  # the server stopped reading: its answer is what counts
    try:
        line = await asyncio.wait_for(answer, 30)
        return line.split()[1].decode() if line else "closed"
    except ConnectionError:
        return "reset"  # refused mid-upload: the server closed with our bytes unread
    except asyncio.TimeoutError:
        return "no answer"
    finally:
        writer.close()


async def with_abuse(load, port: int, slow: int, big: int, hold_s: float):
    """Run the load while ``slow`` slow clients and ``big`` oversized uploads hit the server."""
    tasks = [slow_client(port, hold_s) for _ in range(slow)]
    tasks += [oversized(port, 50 * 2**20, chunked=i % 2 == 1) for i in range(big)]
    result, *abuse = await asyncio.gather(load, *tasks)
    counts: dict[str, int] = {}
    for a in abuse[:slow]:
        counts[f"slow:{a}"] = counts.get(f"slow:{a}", 0) + 1
    for a in abuse[slow:]:
        counts[f"oversized:{a}"] = counts.get(f"oversized:{a}", 0) + 1
    result["abuse"] = counts
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--beam", type=int, default=3)
    ap.add_argument("--images", help="folder of JPEG photos (random JPEGs when omitted)")
    ap.add_argument("--sweep", default="1,4", help="shorter rounds at these concurrencies")
    ap.add_argument("--sweep-requests", type=int, default=100)
    ap.add_argument("--server-args", default="", help="extra `captionkit serve` arguments")
    ap.add_argument("--slow-clients", type=int, default=0,
                    help="during the main round: clients trickling a body a byte a second")
    ap.add_argument("--oversized", type=int, default=0,
                    help="during the main round: 50 MB uploads (declared and chunked)")
    args = ap.parse_args()
    images = load_images(args.images)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_server(args.checkpoint, port, args.server_args.split())
    url = f"http://127.0.0.1:{port}/v1/captions"
    try:
        idle = rss_mib(proc.pid)
        asyncio.run(run_load(url, images, 32, 4, args.beam, proc.pid))  # warm-up (traces)
        rounds = [(int(c), args.sweep_requests) for c in args.sweep.split(",") if c]
        rounds.append((args.concurrency, args.requests))
        results = [asyncio.run(run_load(url, images, n, c, args.beam, proc.pid))
                   for c, n in rounds[:-1]]
        main_load = run_load(url, images, args.requests, args.concurrency, args.beam, proc.pid)
        results.append(asyncio.run(with_abuse(main_load, port, args.slow_clients,
                                              args.oversized, 120.0)))
        batches = httpx.get(f"http://127.0.0.1:{port}/v1/model").json()["batches_run"]
        hwm = rss_mib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; images: {len(images)} "
          f"({'photos' if args.images else 'random JPEGs'}), mean {np.mean([len(b) for b in images]) / 1024:.0f} KiB; "
          f"beam {args.beam}; server idle RSS {idle:.0f} MiB, peak (VmHWM) {hwm:.0f} MiB; "
          f"{batches} model batches in all")
    print(f"\n{'requests':>8} {'conc':>5} {'req/s':>7} {'p50 ms':>8} {'p90 ms':>8} "
          f"{'p99 ms':>8} {'errors':>6} {'peak RSS MiB':>13}  codes")
    for r in results:
        print(f"{r['requests']:>8} {r['concurrency']:>5} {r['throughput']:>7.1f} {r['p50']:>8.0f} "
              f"{r['p90']:>8.0f} {r['p99']:>8.0f} {r['errors']:>6} {r['peak_rss_mib']:>13.0f}  "
              f"{r['codes']}")
    main_round = results[-1]
    if main_round["abuse"]:
        print(f"abuse during the main round: {main_round['abuse']}")
    server_errors = sum(n for c, n in main_round["codes"].items()
                        if not isinstance(c, int) or c >= 500)
    print(f"server_errors={server_errors} peak_rss_mib={main_round['peak_rss_mib']:.0f}")
    print(f"requests={main_round['requests']} errors={main_round['errors']} "
          f"p99_ms={main_round['p99']:.0f}")


if __name__ == "__main__":
    main()
