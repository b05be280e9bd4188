"""Cross-request dynamic batching: concurrent requests share one model call.

Each request `submit()`s one item and awaits its own result. A single task per batcher takes
whatever is queued (up to `max_batch_size`), waits up to `max_wait_ms` for more while the queue is
short, runs the batch function on the model thread, and answers each caller. It waits only under
load, when the previous batch held more than one item: a lone request at low load runs at once
rather than waiting for company that is not coming. While the
model is busy, new requests pile up in the queue, so the next batch is as large as the load
makes it. A bounded queue turns overload into `Overloaded` (HTTP 429), never unbounded latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

from xmodal.models import errors

log = logging.getLogger(__name__)
Item = TypeVar("Item")
# The defaults, here once; app/settings.py's batch_* settings use them too.
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_WAIT_MS = 10.0
DEFAULT_MAX_QUEUE = 1024
Result = TypeVar("Result")


class Overloaded(errors.Overloaded, RuntimeError):
    """The batcher's queue is full; the caller should retry later."""


class DynamicBatcher(Generic[Item, Result]):
    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[Item]], Sequence[Result]],
        executor: Executor,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ):
        self.name, self.run_batch, self.executor = name, run_batch, executor
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_ms / 1000
        self.queue: asyncio.Queue[tuple[Item, asyncio.Future]] = asyncio.Queue(maxsize=max_queue)
        self.size_counts: Counter[int] = Counter()  # batch size -> batches run, since start (for /metrics)
        self._task: asyncio.Task | None = None
        self._last_batch = 0  # size of the previous batch: > 1 means requests are arriving together

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while not self.queue.empty():
            _, future = self.queue.get_nowait()
            if not future.done():
                future.set_exception(Overloaded("server is shutting down"))

    async def submit(self, item: Item) -> Result:
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise Overloaded(f"{self.name} queue is full ({self.queue.maxsize} waiting)") from None
        return await future

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = time.monotonic() + (self.max_wait_s if self._last_batch > 1 else 0.0)
            while len(batch) < self.max_batch_size:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            live = [(item, future) for item, future in batch if not future.done()]  # skip cancelled callers
            if not live:
                continue
            self._last_batch = len(live)
            self.size_counts[len(live)] += 1
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [item for item, _ in live])
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(live, results):
                if not future.done():
                    future.set_result(result)
