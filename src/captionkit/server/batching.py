"""Micro-batching: requests that arrive together go through the model as one batch."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby

from captionkit.server.limits import RequestError


class MicroBatcher:
    """Collects submitted items for at most ``max_wait_s`` (or until ``max_batch`` are in),
    then runs ``fn(key, items) -> results`` once per group of equal ``key`` on one model
    thread. Throughput grows with concurrency; a lone request waits at most ``max_wait_s``.
    More than ``max_queue`` waiting items are refused (429) rather than queued without bound.
    """

    def __init__(self, fn, max_batch: int = 16, max_wait_s: float = 0.005,
                 max_queue: int = 256) -> None:
        self.fn, self.max_batch, self.max_wait_s = fn, max_batch, max_wait_s
        self.queue: asyncio.Queue = asyncio.Queue(max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.task: asyncio.Task | None = None
        self.batches = 0  # batches run, for /v1/model and the load benchmark

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, key, item):
        """Queue ``item`` and wait for its result."""
        fut = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((key, item, fut))
        except asyncio.QueueFull:
            raise RequestError(429, "server busy: too many requests waiting; retry") from None
        return await fut

    async def _collect(self) -> list:
        batch = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), left))
            except asyncio.TimeoutError:
                break
        return [b for b in batch if not b[2].done()]  # skip requests that timed out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            batch.sort(key=lambda b: b[0])
            for key, group in groupby(batch, key=lambda b: b[0]):
                group = list(group)
                try:
                    results = await loop.run_in_executor(
                        self.executor, self.fn, key, [item for _, item, _ in group])
                except Exception as e:  # noqa: BLE001 - handed to every waiting request
                    for _, _, fut in group:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                self.batches += 1
                for (_, _, fut), res in zip(group, results, strict=True):
                    if not fut.done():
                        fut.set_result(res)
