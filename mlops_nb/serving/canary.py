"""Canary routing: a share of live requests is answered by the challenger, sticky per `X-Subject` key, until a
stop file (written by `mlops-nb compare --apply`) names the canary's version."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from pathlib import Path
from typing import Callable

import orjson

from mlops_nb.contracts import CANARY_STOP_FILE
from mlops_nb.serving.scoring import ScoringCore

__all__ = ["Router", "stop_file"]

logger = logging.getLogger("bentoml.mlops_nb.canary")
CHECK_EVERY_S = 1.0  # the stop file's mtime is looked at no more often than this
HASH_SPAN = 2 ** 64  # sticky keys hash to [0, HASH_SPAN); the canary takes those below fraction * HASH_SPAN


def stop_file(settings) -> Path:
    """Where `mlops-nb compare --apply` writes the canary stop file: beside the prediction log."""
    return settings.path(settings.monitoring.prediction_log).parent / CANARY_STOP_FILE


class Router:
    """Chooses the core that answers a request: the canary for `fraction` of requests, the champion for the rest.

    A request with a subject key goes where a stable hash of the key (salted with the canary's version) sends it,
    so one key always meets one version; one without is drawn at random (`seed` for tests). Once the stop file
    names the canary's version, every request goes to the champion; `on_rollback` is called once for that.
    """

    def __init__(self, champion: ScoringCore, canary: ScoringCore, fraction: float, stop_path: Path, *,
                 seed: int | None = None, on_rollback: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.champion, self.canary, self.fraction, self.stop_path = champion, canary, fraction, Path(stop_path)
        self._on_rollback = on_rollback or (lambda: None)
        self._clock, self._draw = clock, random.Random(seed).random
        self._salt = str(canary.card.model_version).encode()
        self._threshold = int(fraction * HASH_SPAN)
        self._checked, self._mtime = clock(), None
        self.stopped = self._stop_named()
        if self.stopped:
            logger.warning("%s names canary v%s: it was rolled back before this worker started; the champion "
                           "answers every request", self.stop_path, canary.card.model_version)

    def route(self, subject: bytes | None) -> tuple[ScoringCore, str]:
        """(core, role) for a request with this `X-Subject` value (None: none sent)."""
        if self.stopped or self._stop_due():
            return self.champion, "champion"
        if subject:
            digest = hashlib.blake2b(subject, digest_size=8, key=self._salt).digest()
            chosen = int.from_bytes(digest, "big") < self._threshold
        else:
            chosen = self._draw() < self.fraction
        return (self.canary, "canary") if chosen else (self.champion, "champion")

    def _stop_due(self) -> bool:
        """Look at the stop file when CHECK_EVERY_S has passed; stop (and report it once) when it names the canary."""
        now = self._clock()
        if now - self._checked < CHECK_EVERY_S:
            return False
        self._checked = now
        if not self._stop_named():
            return False
        self.stopped = True
        logger.warning("%s names canary v%s: rolled back, the champion v%s answers every request from now on",
                       self.stop_path, self.canary.card.model_version, self.champion.card.model_version)
        self._on_rollback()
        return True

    def _stop_named(self) -> bool:
        """Does the stop file, when it changed since last read, name the canary's version?"""
        try:
            mtime = os.stat(self.stop_path).st_mtime_ns
        except OSError:  # none written (the usual case)
            return False
        if mtime == self._mtime:
            return False
        try:
            named = orjson.loads(self.stop_path.read_bytes()).get("model_version")
        except (OSError, orjson.JSONDecodeError, AttributeError):  # mid-write or not ours: look again next time
            return False
        self._mtime = mtime
        return str(named) == str(self.canary.card.model_version)

    def describe(self) -> dict:
        """The canary as /model/metadata shows it."""
        return {"model_version": self.canary.card.model_version, "fraction": self.fraction, "stopped": self.stopped}
