"""Champion against shadow challenger, from the prediction log: agreement, and accuracy once labels arrive."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mlops_nb.monitoring import iter_prediction_log

__all__ = ["ShadowComparison", "compare_shadow", "read_labels"]


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


def read_labels(path: Path | str) -> dict[tuple[str, int], str]:
    """True labels that arrived later: a CSV (header `request_id,label[,row]`) or JSON lines with those keys; `row`
    (the row's position in its request) defaults to 0. Keyed by (request id, row); labels as text."""
    path = Path(path)
    with open(path, newline="") as f:
        records = csv.DictReader(f) if path.suffix.lower() == ".csv" else (json.loads(line) for line in f
                                                                           if line.strip())
        labels = {}
        for number, record in enumerate(records, 1):
            if not {"request_id", "label"} <= set(record):
                raise ValueError(f"{path}: record {number} lacks request_id or label (it has {sorted(record)})")
            labels[(str(record["request_id"]), int(record.get("row") or 0))] = str(record["label"])
    return labels


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
