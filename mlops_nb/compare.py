"""Champion against shadow challenger, from the prediction log: agreement, and accuracy once labels arrive."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlops_nb.monitoring import iter_prediction_log

__all__ = ["ShadowComparison", "compare_shadow", "iter_labels", "read_labels"]


@dataclass
class ShadowComparison:
    """Rows the champion answered and the shadow challenger scored too, compared label by label."""

    log: str
    champion_versions: dict[str, int] = field(default_factory=dict)
    challenger_versions: dict[str, int] = field(default_factory=dict)
    requests: int = 0  # shadow-scored requests paired with the champion's answer
    unpaired: int = 0  # shadow records whose champion record is not in the log
    rows: int = 0
    agreeing_rows: int = 0
    labelled_rows: int = 0
    champion_correct: int = 0
    challenger_correct: int = 0

    @property
    def agreement(self) -> float | None:
        return self.agreeing_rows / self.rows if self.rows else None

    @property
    def champion_accuracy(self) -> float | None:
        return self.champion_correct / self.labelled_rows if self.labelled_rows else None

    @property
    def challenger_accuracy(self) -> float | None:
        return self.challenger_correct / self.labelled_rows if self.labelled_rows else None

    def to_dict(self) -> dict:
        return {**self.__dict__, "agreement": self.agreement, "champion_accuracy": self.champion_accuracy,
                "challenger_accuracy": self.challenger_accuracy}


def iter_labels(path: Path | str) -> Iterator[tuple[str, int, str]]:
    """True labels that arrived later, one (request id, row, label) at a time: a CSV (header `request_id,label[,row]`)
    or JSON lines with those keys; `row` (the row's position in its request) defaults to 0; labels as text.
    `ValueError` naming the record and the field when one is malformed."""
    path = Path(path)
    with open(path, newline="") as f:
        records = csv.DictReader(f) if path.suffix.lower() == ".csv" else _json_lines(f, path)
        for number, record in enumerate(records, 1):
            if not isinstance(record, dict) or not {"request_id", "label"} <= set(record):
                raise ValueError(f"{path}: record {number} lacks request_id or label (it has "
                                 f"{sorted(record) if isinstance(record, dict) else type(record).__name__})")
            if record["request_id"] in (None, "") or record["label"] in (None, ""):
                raise ValueError(f"{path}: record {number} has an empty request_id or label")
            row = record.get("row")
            if not (row in (None, "") or str(row).isdigit()):
                raise ValueError(f"{path}: record {number}: row {row!r} is not a row number (0, 1, ...)")
            yield str(record["request_id"]), int(row or 0), str(record["label"])


def _json_lines(f, path: Path) -> Iterator:
    for number, line in enumerate(f, 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {number} is not JSON ({error.msg}); labels are CSV (.csv, header "
                                 "request_id,label[,row]) or JSON lines") from None


def read_labels(path: Path | str) -> dict[tuple[str, int], str]:
    """`iter_labels` as a dict keyed by (request id, row): for a few labels (`mlops_nb.accuracy` joins many)."""
    return {(request_id, row): label for request_id, row, label in iter_labels(path)}


def compare_shadow(log: Path | str, labels: dict[tuple[str, int], str] | None = None) -> ShadowComparison:
    """Pair each shadow record of the prediction log with the champion's record of the same request (two streamed
    passes: memory grows with the shadow-scored requests, not with the log)."""
    shadow = {r["request_id"]: (r["model_version"], r["labels"]) for r in iter_prediction_log(log)
              if r.get("role") == "shadow"}
    result = ShadowComparison(str(log))
    champions, challengers = Counter(), Counter()
    for record in iter_prediction_log(log):
        partner = shadow.pop(record["request_id"], None) if record.get("role") == "champion" else None
        if partner is None:
            continue
        result.requests += 1
        champions[record["model_version"]] += 1
        challengers[partner[0]] += 1
        for row, (ours, theirs) in enumerate(zip(record["labels"], partner[1])):
            result.rows += 1
            result.agreeing_rows += ours == theirs
            truth = (labels or {}).get((record["request_id"], row))
            if truth is not None:
                result.labelled_rows += 1
                result.champion_correct += str(ours) == truth
                result.challenger_correct += str(theirs) == truth
    result.unpaired = len(shadow)
    result.champion_versions, result.challenger_versions = dict(champions), dict(challengers)
    return result
