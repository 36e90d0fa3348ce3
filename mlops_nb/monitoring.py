"""Prediction log: one JSON line per served request (inputs, answers, model version), the input to drift checks."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

__all__ = ["PredictionLog", "read_prediction_log"]


class PredictionLog:
    """Append-only JSON-lines log; safe across threads, and across worker processes (one O_APPEND write a line)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, *, model_version: str, instances: list[list[float]], labels: list[int],
              confidence: list[float], latency_ms: float) -> None:
        record = {"time": time.time(), "model_version": model_version, "instances": instances, "labels": labels,
                  "confidence": confidence, "latency_ms": round(latency_ms, 3)}
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            with open(self.path, "ab") as f:
                f.write(line)


def read_prediction_log(path: Path | str) -> list[dict]:
    """Every record of a prediction log, oldest first."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
