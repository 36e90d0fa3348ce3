"""The prediction log's writer: off the request path, from a bounded queue, in batches, never failing a request."""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Callable

import orjson

__all__ = ["PredictionLogWriter"]

logger = logging.getLogger("bentoml.mlops_nb.prediction_log")
_STOP = object()


class PredictionLogWriter:
    """Appends records (dicts; numpy arrays allowed) as JSON lines to `path` from a background thread.

    `put` never blocks: a full queue drops the record. A batch that cannot be written (full disk, unwritable
    path) is dropped too. Drops are counted (`dropped`, and `on_drop` for a metric) and warned about once.
    Each batch is one append (O_APPEND) of whole lines, so concurrent writers never tear a line.
    """

    def __init__(self, path: Path | str, *, queue_size: int = 10_000, batch_size: int = 512, linger_s: float = 0.05,
                 on_drop: Callable[[int], None] | None = None) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.linger_s = linger_s  # a batch waits this long for company: fewer wake-ups competing with requests
        self.dropped = 0
        self._on_drop = on_drop
        self._warned = False
        self._file = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def put(self, record: dict) -> None:
        """Queue one record for writing; drop it (counted) when the queue is full."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._drop(1, "the queue is full (the disk is slower than the traffic)")

    def close(self, timeout_s: float = 30) -> None:
        """Write everything queued, then stop the writer thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        if self._on_drop:
            self._on_drop(count)
        if not self._warned:
            self._warned = True
            logger.warning("prediction log %s: dropping records because %s; requests are still answered "
                           "(counted in mlops_nb_prediction_log_dropped_total; warned once)", self.path, why)

    def _write(self, batch: list[dict]) -> None:
        lines = b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)
                         for r in batch)
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "ab", buffering=0)
            self._file.write(lines)
        except OSError as error:
            self._file = None
            self._drop(len(batch), f"writing failed: {error}")

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            if batch[0] is not _STOP:
                time.sleep(self.linger_s)
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                stop = True
                batch = [r for r in batch if r is not _STOP]
            if batch:
                self._write(batch)
        if self._file is not None:
            self._file.close()
