"""The scoring core every route uses: validate rows -> score with ONNX Runtime -> log; no HTTP here."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlops_nb.contracts import PREDICTION_LOG_SCHEMA, ModelCard

__all__ = ["RowError", "InvalidInput", "validate_rows", "row_reasons", "occlusion", "ScoringCore"]

MAX_REASONS = 20  # per-row reasons returned for one request
OCCLUSION_BATCH_ROWS = 16384  # rows per ONNX call of /explain: bounds its memory whatever the feature count
EXPLAIN_METHOD = ("occlusion: the predicted class's probability minus its probability with that feature set to its "
                  "training mean")


@dataclass(frozen=True)
class RowError:
    """Why one row (or the request as a whole, `row` None) was rejected; `field` names the place."""

    field: str
    reason: str
    row: int | None = None


@dataclass
class InvalidInput(ValueError):
    """The request's rows failed validation; `errors` holds the reasons (the first few)."""

    errors: list[RowError] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(f"{e.field}: {e.reason}" for e in self.errors)


def _number_reason(value, low: float, high: float) -> str | None:
    """Why a number breaks the contract (NaN: a missing or non-numeric value), or None; one wording for all routes."""
    if math.isnan(value):
        return "missing or not a number"
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if not low <= value <= high:
        return f"{value} is outside the allowed range [{low}, {high}]"
    return None


def _value_reason(value, low: float, high: float) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, got {type(value).__name__} {value!r:.40}"
    return _number_reason(value, low, high)


def _bad_values(array: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) indices of every value of a 2-D array outside [low, high], NaN and infinities included, in
    row-major order."""
    return np.nonzero(~((array >= low) & (array <= high)))


def row_reasons(array: np.ndarray, *, features: list[str], low: float, high: float) -> dict[int, str]:
    """The first problem of each bad row of a 2-D float64 array (NaN marks a missing or non-numeric value), as
    {row index: "feature: reason"}; rows not named are valid. Vectorized: batch scoring checks whole chunks."""
    rows, columns = _bad_values(array, low, high)
    first = np.unique(rows, return_index=True)[1]  # row-major order: each row's first bad column
    return {int(i): f"{features[j]}: {_number_reason(float(array[i, j]), low, high)}"
            for i, j in zip(rows[first], columns[first])}


def _row_errors(rows: list, *, n_features: int, low: float, high: float, field: str) -> list[RowError]:
    """Every problem, row by row (the slow path, taken only for a request that fails the fast check)."""
    errors = []
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            errors.append(RowError(f"{field}[{i}]", f"must be a list of {n_features} numbers", i))
        elif len(row) != n_features:
            errors.append(RowError(f"{field}[{i}]", f"has {len(row)} values; expected {n_features}", i))
        else:
            errors += [RowError(f"{field}[{i}][{j}]", reason, i) for j, value in enumerate(row)
                       if (reason := _value_reason(value, low, high))]
        if len(errors) >= MAX_REASONS:
            break
    return errors[:MAX_REASONS]


def _numeric(rows: list) -> np.ndarray | None:
    try:
        return np.array(rows, dtype=np.float64)
    except (ValueError, TypeError):
        return None


def validate_rows(rows, *, n_features: int, low: float, high: float, max_rows: int,
                  numbers_only: bool = False, field: str = "instances") -> np.ndarray:
    """Rows of raw feature values (a list of rows, or a numeric array) as a float32 array; `InvalidInput` with
    per-row reasons, each naming its place under `field`, otherwise.

    `numbers_only` says the caller has established that the rows hold nothing but lists and numbers (no strings,
    booleans or nulls, which numpy would convert): the whole request is then checked at once, and only a request
    that fails is examined row by row. Otherwise every value is checked.
    """
    array = rows if isinstance(rows, np.ndarray) else None
    if array is None and not isinstance(rows, list):
        raise InvalidInput([RowError(field, f"must be a list of rows, got {type(rows).__name__}")])
    if not 1 <= len(rows) <= max_rows:
        raise InvalidInput([RowError(field, f"holds {len(rows)} rows; send 1 to {max_rows} "
                                            "([serving] max_rows_per_request)")])
    if array is None and numbers_only:
        array = _numeric(rows)
    if array is not None and array.ndim == 2 and array.shape[1] == n_features:
        if ((array >= low) & (array <= high)).all():  # NaN compares false
            return array.astype(np.float32, copy=False)
        bad = zip(*(indices[:MAX_REASONS] for indices in _bad_values(array, low, high)))
        raise InvalidInput([RowError(f"{field}[{i}][{j}]", _number_reason(float(array[i, j]), low, high),
                                     int(i)) for i, j in bad])
    if isinstance(rows, np.ndarray):
        raise InvalidInput([RowError(field, f"has shape {list(rows.shape)}; expected [rows, {n_features}]")])
    if errors := _row_errors(rows, n_features=n_features, low=low, high=high, field=field):
        raise InvalidInput(errors)
    return np.asarray(rows, dtype=np.float32)


def occlusion(score, features: np.ndarray, baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities of raw rows and, per row and feature, how much the predicted class's probability drops
    when that feature alone takes its `baseline` value (the training mean): batched calls of `score`, each of at most
    OCCLUSION_BATCH_ROWS rows (one call for a small request)."""
    width = features.shape[1]
    step = max(1, OCCLUSION_BATCH_ROWS // (width + 1))
    probabilities, attributions = [], []
    for chunk in (features[i:i + step] for i in range(0, len(features), step)):
        batch = np.repeat(chunk[:, None, :], width + 1, axis=1)  # per row: itself, then one copy per feature
        batch[:, np.arange(width) + 1, np.arange(width)] = baseline
        scored = score(batch.reshape(-1, width)).reshape(len(chunk), width + 1, -1)
        kept = scored[np.arange(len(chunk)), :, scored[:, 0].argmax(axis=1)]
        probabilities.append(scored[:, 0])
        attributions.append(kept[:, :1] - kept[:, 1:])
    return np.concatenate(probabilities), np.concatenate(attributions)


class ScoringCore:
    """One model version, loaded once per process: validates, scores and answers; routes are codecs over it."""

    def __init__(self, model_dir: Path | str, card: ModelCard, *, device: str = "cpu", max_rows: int = 1024,
                 threads: int | None = None):
        from mlops_nb.onnx_export import ort_session

        self.card = card
        self.max_rows = max_rows
        self.session = ort_session(Path(model_dir) / "model.onnx", device, threads=threads)
        self.provider = self.session.get_providers()[0]
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [self.session.get_outputs()[0].name]
        self.classes = np.asarray(card.classes)  # output index -> class label, as the training data had it

    def validate(self, rows, *, numbers_only: bool = False, field: str = "instances") -> np.ndarray:
        """`validate_rows` with this model's contract."""
        return validate_rows(rows, n_features=self.card.n_features, low=self.card.feature_min,
                             high=self.card.feature_max, max_rows=self.max_rows, numbers_only=numbers_only,
                             field=field)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities for validated raw rows (float32)."""
        return self.session.run(self.output_names, {self.input_name: features})[0]

    def explain(self, features: np.ndarray, request_id: str) -> dict:
        """The answer for validated raw rows with per-feature attributions (`occlusion` against the training mean)."""
        probabilities, attributions = occlusion(self.score, features, np.asarray(self.card.feature_mean, np.float32))
        answer = self.answer(probabilities, request_id)
        for prediction, row in zip(answer["predictions"], attributions):
            prediction["attributions"] = row
        return {**answer, "features": self.card.features, "method": EXPLAIN_METHOD}

    def answer(self, probabilities: np.ndarray, request_id: str) -> dict:
        """The response body: a label and probabilities per row, the model's name and version, the request id."""
        labels = self.classes[probabilities.argmax(axis=1)].tolist()
        return {"predictions": [{"label": label, "probabilities": row} for label, row in zip(labels, probabilities)],
                "model_name": self.card.model_name, "model_version": self.card.model_version,
                "request_id": request_id}

    def record(self, rows: list, probabilities: np.ndarray, request_id: str, started: float,
               role: str = "champion", subject: str | None = None) -> dict:
        """The prediction-log record of an answered (or shadow-scored) request, serialized later off the request
        path."""
        return {"schema_version": PREDICTION_LOG_SCHEMA, "request_id": request_id, "time": time.time(),
                "model_name": self.card.model_name, "model_version": self.card.model_version, "role": role,
                "subject": subject, "inputs": rows,
                "labels": self.classes[probabilities.argmax(axis=1)].tolist(),
                "confidence": probabilities.max(axis=1), "latency_ms": (time.perf_counter() - started) * 1000}
