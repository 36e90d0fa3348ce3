"""Accuracy on production data: delayed labels joined to the prediction log, per version and window."""

# Bounded memory: the labels are held as two numpy arrays sorted by key (`request_id` + row as bytes, and a label
# code), about key length + 4 bytes a label, never as Python strings; the log is streamed and joined in chunks with
# `searchsorted`; per (version, window) only a confusion count is kept. The metric is `[gates] metric`, compared with
# the version's registered test figure through `registry.gate_score` (DECISIONS 16).

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mlops_nb.compare import iter_labels
from mlops_nb.monitoring import iter_prediction_log

__all__ = ["LabelIndex", "Window", "VersionAccuracy", "AccuracyVerdict", "confusion_score", "check_accuracy",
           "record_accuracy", "EVIDENCE"]

CHUNK = 65536
EVIDENCE = "monitor-accuracy.json"  # in products/evidence/
OK, DEGRADED, TOO_FEW = "ok", "degraded", "too few labels"


def _key(request_id: str, row: int) -> bytes:
    return f"{request_id}\x1f{row}".encode()


class LabelIndex:
    """Labels keyed by (request id, row), sorted by key; a key given twice keeps its last label."""

    def __init__(self, path: Path | str):
        self.codes: dict[str, int] = {}  # label text -> code, shared with the logged answers
        keys, codes, chunk_keys, chunk_codes = [], [], [], []
        for request_id, row, label in iter_labels(path):
            chunk_keys.append(_key(request_id, row))
            chunk_codes.append(self.code(label))
            if len(chunk_keys) == CHUNK:
                keys.append(np.array(chunk_keys, "S"))
                codes.append(np.array(chunk_codes, np.int32))
                chunk_keys, chunk_codes = [], []
        keys.append(np.array(chunk_keys, "S"))
        codes.append(np.array(chunk_codes, np.int32))
        if not sum(map(len, keys)):
            raise ValueError(f"{path}: no labels (CSV with header request_id,label[,row], or JSON lines)")
        key, code = np.concatenate(keys), np.concatenate(codes)
        order = np.argsort(key, kind="stable")
        key, code = key[order], code[order]
        last = np.append(key[1:] != key[:-1], True)
        self.keys, self.labels = key[last], code[last]
        self.duplicates = int(len(key) - last.sum())

    def __len__(self) -> int:
        return len(self.keys)

    def code(self, label) -> int:
        return self.codes.setdefault(str(label), len(self.codes))

    def lookup(self, keys: list[bytes]) -> np.ndarray:
        """The label code of each key, -1 where there is none."""
        query = np.array(keys, "S")
        at = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
        return np.where(self.keys[at] == query, self.labels[at], -1)


def confusion_score(confusion: dict[tuple[int, int], int], metric: str) -> float:
    """`metric` from counts of (true, predicted) label codes, by the canary verdict's `label_metric` (one
    computation of the [gates] metric from answered labels; roc_auc needs probabilities: `ValueError`)."""
    from mlops_nb.canary_verdict import label_metric

    size = 1 + max(max(pair) for pair in confusion)
    matrix = np.zeros((size, size))
    for (truth, answer), count in confusion.items():
        matrix[truth, answer] += count
    return float(label_metric(metric, matrix))


@dataclass
class Window:
    """One version's answers in one window: rows answered, rows labelled, the metric and the verdict."""

    start: str  # ISO 8601, UTC
    end: str
    rows: int
    labelled: int
    score: float | None
    drop: float | None  # registered - score
    verdict: str  # ok, degraded, too few labels


@dataclass
class VersionAccuracy:
    """One version's windows, oldest first; `status` is its latest judged window's verdict (too few labels: none)."""

    model_name: str
    model_version: str
    registered: float  # the registered card's test figure on the metric
    status: str
    windows: list[Window] = field(default_factory=list)

    @property
    def latest(self) -> Window | None:
        return next((w for w in reversed(self.windows) if w.verdict != TOO_FEW), None)


@dataclass
class AccuracyVerdict:
    """`status`: degraded (a version's latest judged window), ok, or cannot judge; the reasons and the evidence."""

    status: str
    reasons: list[str]
    versions: list[VersionAccuracy]
    joined: dict
    thresholds: dict

    @property
    def exit_code(self) -> int:
        return {OK: 0, DEGRADED: 1}.get(self.status, 2)

    def to_dict(self) -> dict:
        return asdict(self)


class _Group:
    __slots__ = ("rows", "confusion")

    def __init__(self):
        self.rows, self.confusion = 0, Counter()


def _join(paths: list[Path], index: LabelIndex, width: float, since: float | None, until: float | None,
          counts: dict) -> dict[tuple[str, str, int], _Group]:
    """Stream the log; count each answered row, and each labelled one as (true, predicted), per (model name,
    version, window number)."""
    groups: dict[tuple[str, str, int], _Group] = {}
    skipped = counts.setdefault("skipped", Counter())
    keys, owners, answers = [], [], []

    def flush():
        truth = index.lookup(keys)
        for group, true, answer in zip(owners, truth.tolist(), answers):
            if true >= 0:
                group.confusion[true, answer] += 1
        for buffer in (keys, owners, answers):
            buffer.clear()

    for record in iter_prediction_log(paths, counts):
        t = record.get("time")
        if t is None or (since is not None and t < since) or (until is not None and t >= until):
            skipped["no time" if t is None else "outside --since/--until"] += 1
            continue
        role, failed = record.get("role", "champion"), record.get("failed_version")
        if role == "shadow" or (record.get("fallback_reason") and failed == str(record["model_version"])):
            skipped["shadow" if role == "shadow" else "failed, unanswered"] += 1  # not the answer the caller got
            continue
        key = (record["model_name"], str(record["model_version"]), int(t // width))
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group()
        group.rows += len(record["labels"])
        for row, answer in enumerate(record["labels"]):
            keys.append(_key(record["request_id"], row))
            answers.append(index.code(answer))
        owners.extend([group] * len(record["labels"]))
        if len(keys) >= CHUNK:
            flush()
    if keys:
        flush()
    return groups


def _order(item: tuple) -> tuple:
    """(model name, version, window number) with version 2 before version 10."""
    (name, version, number), _ = item
    return name, version.zfill(12), number


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def _reason(v: VersionAccuracy, metric: str, m) -> str:
    """One line on a version: its latest judged window, or why none could be judged."""
    latest = v.latest
    if latest is None:
        return (f"v{v.model_version}: {TOO_FEW}, no window has {m.min_labelled_rows} labelled rows ([monitoring] "
                f"min_labelled_rows; the most in one is {max(w.labelled for w in v.windows)})")
    over = latest.verdict == DEGRADED
    return (f"v{v.model_version}: {latest.verdict}, {metric} {latest.score:.4f} in window {latest.start} .. "
            f"{latest.end} against the registered {v.registered:.4f}: drop {latest.drop:.4f} "
            f"{'>' if over else '<='} max_accuracy_drop {m.max_accuracy_drop:g}, {latest.labelled} labelled rows")


def check_accuracy(settings, files: Iterable[Path | str], labels: Path | str, *, since: float | None = None,
                   until: float | None = None) -> AccuracyVerdict:
    """Join `labels` to the answers in the log `files` (oldest first) and judge each version's windows of
    `[monitoring] accuracy_window_hours` (aligned to the Unix epoch: UTC days for 24) on `[gates] metric` against
    the version's registered test figure. `ValueError` for a bad labels file or an unsupported metric."""
    from mlops_nb.registry import gate_score, version_card

    m, metric = settings.monitoring, settings.gates.metric
    confusion_score({(0, 0): 1}, metric)  # an unsupported metric fails before the log is read
    started, paths = time.perf_counter(), [Path(p) for p in files]
    index, counts = LabelIndex(labels), {}
    width = m.accuracy_window_hours * 3600
    groups = _join(paths, index, width, since, until, counts)
    versions: dict[tuple[str, str], VersionAccuracy] = {}
    for (name, version, number), group in sorted(groups.items(), key=_order):
        if (name, version) not in versions:
            registered = gate_score(version_card(name, version, settings), metric)
            versions[name, version] = VersionAccuracy(name, version, registered, TOO_FEW)
        found = versions[name, version]
        labelled = sum(group.confusion.values())
        score = confusion_score(group.confusion, metric) if labelled else None
        drop = None if score is None else round(found.registered - score, 12)  # 0.95 - 0.9 is not above 0.05
        verdict = (TOO_FEW if labelled < m.min_labelled_rows else DEGRADED if drop > m.max_accuracy_drop else OK)
        found.windows.append(Window(_iso(number * width), _iso((number + 1) * width), group.rows, labelled, score,
                                    drop, verdict))
    for v in versions.values():
        v.status = v.latest.verdict if v.latest else TOO_FEW
    ordered = sorted(versions.values(), key=lambda v: v.status != DEGRADED)  # degraded versions first
    reasons = [_reason(v, metric, m) for v in ordered]
    statuses = {v.status for v in ordered}
    status = DEGRADED if DEGRADED in statuses else OK if OK in statuses else "cannot judge"
    if not paths:
        reasons.append("no prediction log found: serve the model with [monitoring] log_predictions = true")
    elif not versions:
        outside = counts["skipped"].get("outside --since/--until")
        reasons.append(f"no answers in {', '.join(map(str, paths))}" + (" in the window" if outside else ""))
    joined = {"labels_file": str(labels), "labels": len(index), "duplicate_labels": index.duplicates,
              "labelled_rows": sum(w.labelled for v in versions.values() for w in v.windows),
              "answered_rows": sum(w.rows for v in versions.values() for w in v.windows),
              "files": [str(p) for p in paths], "since": since, "until": until,
              "skipped_records": dict(counts["skipped"]), "torn_lines": counts.get("torn", 0),
              "seconds": round(time.perf_counter() - started, 3)}
    thresholds = {"metric": metric, "accuracy_window_hours": m.accuracy_window_hours,
                  "max_accuracy_drop": m.max_accuracy_drop, "min_labelled_rows": m.min_labelled_rows}
    return AccuracyVerdict(status, reasons, list(versions.values()), joined, thresholds)


def record_accuracy(verdict: AccuracyVerdict, settings) -> Path:
    """Write the evidence, `products/evidence/monitor-accuracy.json`; returns its path."""
    from mlops_nb.products import write_json

    path = settings.products_dir / "evidence" / EVIDENCE
    write_json(path, {**verdict.to_dict(), "checked_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return path
