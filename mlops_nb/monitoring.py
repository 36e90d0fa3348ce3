"""Monitoring: reading the prediction log that the serving path writes (`mlops_nb.serving.prediction_log`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson

__all__ = ["read_prediction_log", "iter_prediction_log"]


def iter_prediction_log(path: Path | str) -> Iterator[dict]:
    """The records of a prediction log one at a time, oldest first (see `mlops_nb.contracts.PredictionRecord`)."""
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield orjson.loads(line)


def read_prediction_log(path: Path | str) -> list[dict]:
    """Every record of a prediction log, oldest first."""
    return list(iter_prediction_log(path))
