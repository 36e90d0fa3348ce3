"""Monitoring: reading the prediction log that the serving path writes (`mlops_nb.serving.prediction_log`)."""

from __future__ import annotations

from pathlib import Path

import orjson

__all__ = ["read_prediction_log"]


def read_prediction_log(path: Path | str) -> list[dict]:
    """Every record of a prediction log, oldest first (see `mlops_nb.contracts.PredictionRecord`)."""
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]
