"""Shadow challenger: a sampled share of answered requests is scored by the challenger too, off the request path."""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from typing import Callable

import numpy as np

from mlops_nb.serving.scoring import ScoringCore

__all__ = ["Shadow"]

logger = logging.getLogger("bentoml.mlops_nb.shadow")
_STOP = object()


class Shadow:
    """Scores `fraction` of the offered requests with the challenger's core in a background thread and puts a
    `role: shadow` record (same request id as the champion's record) into the prediction log.

    `offer` only samples and enqueues: the champion's answer never waits for the challenger. A full queue drops
    the offer; every outcome (scored, dropped, failed) is passed to `on_outcome` for a metric.
    """

    def __init__(self, core: ScoringCore, log, fraction: float, *, queue_size: int = 1000,
                 on_outcome: Callable[[str], None] | None = None) -> None:
        self.core, self.log, self.fraction = core, log, fraction
        self._on_outcome = on_outcome or (lambda outcome: None)
        self._sample = random.Random().random
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="shadow-challenger", daemon=True)
        self._thread.start()

    def offer(self, features: np.ndarray, request_id: str) -> None:
        """Maybe (with probability `fraction`) queue validated rows for the challenger."""
        if self._sample() >= self.fraction:
            return
        try:
            self._queue.put_nowait((features, request_id))
        except queue.Full:
            self._on_outcome("dropped")

    def close(self, timeout_s: float = 30) -> None:
        """Score what is queued, then stop."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            features, request_id = item
            started = time.perf_counter()
            try:
                probabilities = self.core.score(features)
            except Exception:  # the challenger's fault never reaches a client; counted and logged
                logger.exception("shadow challenger v%s failed on request %s", self.core.card.model_version,
                                 request_id)
                self._on_outcome("failed")
                continue
            self.log.put(self.core.record([], probabilities, request_id, started, role="shadow"))
            self._on_outcome("scored")
