"""Adaptive batching inside the worker: concurrent requests' rows scored by one ONNX Runtime call."""

# It pays where one call for many rows is much cheaper than many calls (a GPU, a large model); for a small model
# on CPU the inline call is faster (see README's serving table). `[serving] batching = adaptive` turns it on.

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["Batcher"]


class Batcher:
    """Collects rows until `max_batch_size` are waiting or the oldest waited `max_latency_ms`, then scores them
    in one call on a worker thread (the event loop keeps accepting requests meanwhile)."""

    def __init__(self, score, *, max_batch_size: int, max_latency_ms: float) -> None:
        self._score = score
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_ms / 1000
        self._pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self._rows = 0
        self._timer: asyncio.TimerHandle | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")

    async def score(self, features: np.ndarray) -> np.ndarray:
        """Probabilities for `features`, scored together with whatever else arrives meanwhile."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((features, future))
        self._rows += len(features)
        if self._rows >= self.max_batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_latency_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending, self._rows = self._pending, [], 0
        asyncio.get_running_loop().run_in_executor(self._executor, self._run, batch, asyncio.get_running_loop())

    def _run(self, batch, loop) -> None:
        try:
            probabilities = self._score(np.concatenate([features for features, _ in batch]))
            parts = np.split(probabilities, np.cumsum([len(features) for features, _ in batch])[:-1])
            results = [(future, part, None) for (_, future), part in zip(batch, parts)]
        except Exception as error:  # every waiting request gets the error, none hangs
            results = [(future, None, error) for _, future in batch]
        loop.call_soon_threadsafe(_resolve, results)


def _resolve(results) -> None:
    for future, value, error in results:
        if not future.done():
            future.set_exception(error) if error else future.set_result(value)
