"""The prediction log's writer: off the request path, from a bounded queue, in batches, never failing a request."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable

import orjson

from mlops_nb.monitoring import log_files, log_lock

__all__ = ["PredictionLogWriter"]

logger = logging.getLogger("bentoml.mlops_nb.prediction_log")
_STOP = object()


class PredictionLogWriter:
    """Appends records (dicts; numpy arrays allowed) as JSON lines to `path` from a background thread.

    `put` never blocks: a full queue drops the record. A batch that cannot be written (full disk, unwritable
    path) is dropped too. Drops are counted (`dropped`, and `on_drop` for a metric) and warned about once.
    `redact` (see `mlops_nb.privacy.redactor`) runs on this thread, off the request path.

    Several writers (one per worker process) may share `path`. Each batch is one append (O_APPEND) of whole lines
    under the log's shared lock (`mlops_nb.monitoring.log_lock`), after reopening `path` when it is another file
    than the one open (rotated, or rewritten by `mlops-nb log erase`/`prune` under the exclusive lock): so lines are
    never torn or interleaved, and no batch lands in a file that was renamed or replaced. Past `max_bytes` (0 = never)
    the writer that crossed it rotates under the exclusive lock, checking the size again first (another writer may
    have rotated already): `PATH.k` -> `PATH.k+1`, `PATH` -> `PATH.1`, keeping `max_files` rotated files. A file may
    pass `max_bytes` by one batch.
    """

    def __init__(self, path: Path | str, *, queue_size: int = 10_000, batch_size: int = 512, linger_s: float = 0.05,
                 on_drop: Callable[[int], None] | None = None, redact: Callable[[dict], dict] | None = None,
                 max_bytes: int = 0, max_files: int = 10) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.max_bytes, self.max_files = max_bytes, max_files
        self._redact = redact
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

    @classmethod
    def from_settings(cls, settings, on_drop: Callable[[int], None] | None = None) -> "PredictionLogWriter":
        """The writer `[monitoring]` describes (path, redaction, rotation); refuses a missing salt (PrivacyError)."""
        from mlops_nb.privacy import redactor

        m = settings.monitoring
        return cls(settings.path(m.prediction_log), on_drop=on_drop, redact=redactor(m), max_bytes=m.max_bytes,
                   max_files=m.max_files)

    def _write(self, batch: list[dict]) -> None:
        try:
            lines = b"".join(orjson.dumps(self._redact(r) if self._redact else r,
                                          option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)
                             for r in batch)
            with log_lock(self.path, shared=True):
                self._reopen()
                self._file.write(lines)
                full = self.max_bytes and os.fstat(self._file.fileno()).st_size >= self.max_bytes
            if full:
                self._rotate()
        except (OSError, TypeError) as error:  # orjson's encode error is a TypeError
            self._close()
            self._drop(len(batch), f"writing failed: {error}")

    def _reopen(self) -> None:
        """Open `path` unless the file open is still the one there."""
        if self._file is not None:
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                now = None
            was = os.fstat(self._file.fileno())
            if now is not None and (now.st_ino, now.st_dev) == (was.st_ino, was.st_dev):
                return
            self._close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab", buffering=0)

    def _rotate(self) -> None:
        with log_lock(self.path):
            if not self.path.exists() or self.path.stat().st_size < self.max_bytes:
                return  # another writer rotated it first
            for old in log_files(self.path)[:-1]:  # PATH.N ... PATH.1: the highest number first
                number = int(old.suffix[1:])
                if number >= self.max_files:
                    old.unlink()
                else:
                    os.replace(old, old.with_suffix(f".{number + 1}"))
            os.replace(self.path, f"{self.path}.1")

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

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
        self._close()
