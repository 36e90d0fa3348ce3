"""Drift monitor: each served version's logged rows against the reference profile registered with that version."""

# The log is streamed; per version only binned counts on the reference's bins, predicted-class counts, a confidence
# histogram and a bounded timeline are kept, so memory does not grow with the window. Every check (each feature, the
# predicted classes, the confidence) drifts when its PSI exceeds `psi_threshold` AND its two-sample test's p-value,
# Holm-corrected across all of one version's checks, is below `ks_alpha` (`[monitoring]`). Holm controls the chance of
# any false alarm (what a retrain signal needs) under any dependence between checks, which neighbouring pixels or
# correlated columns have; Benjamini-Hochberg would bound a share of false features instead. (At most 3 docstring
# lines: nbdev-export lists longer module docstrings in __init__.py.)

from __future__ import annotations

import json
import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import chi2_contingency, kstwobign

from mlops_nb.monitoring import iter_prediction_log

__all__ = ["Reference", "Check", "VersionDrift", "Verdict", "monitor", "check", "registry_reference", "record_verdict",
           "psi", "binned_ks", "holm", "CLASSES", "CONFIDENCE", "DRIFT_GAUGE"]

CHUNK_ROWS = 8192
TIMELINE_BUCKETS = 120  # the timeline's most buckets: their width doubles from 60 s as the window grows
EPS = 1e-4  # share floor in PSI, so an empty bin on either side gives a large but finite term
CLASSES, CONFIDENCE = "predicted classes", "confidence"  # the names of the two prediction checks
DRIFT_GAUGE = "drift.prom"  # in products/monitor/, beside the flag


@dataclass(frozen=True)
class Reference:
    """What a version is compared against: its features' bin edges and counts, and (from the served variant's
    answers on the test split) its predicted-class counts and confidence histogram, when the profile has them."""

    features: list[str]
    edges: np.ndarray  # (features, bins + 1)
    counts: np.ndarray  # (features, bins)
    class_counts: dict[str, int] | None = None
    confidence_edges: np.ndarray | None = None
    confidence_counts: np.ndarray | None = None

    @classmethod
    def from_profile(cls, profile: dict, features: list[str]) -> "Reference":
        """From the registered `reference_profile.json`: `feature_profile` (02_validate) plus `prediction`
        (`prediction_profile`, 05_export_onnx)."""
        stats = [profile["features"][name] for name in features]
        edges, counts = (np.array([s[key] for s in stats], float) for key in ("edges", "counts"))
        answers = profile.get("prediction")
        if not answers:
            return cls(features, edges, counts)
        return cls(features, edges, counts, {str(k): int(v) for k, v in answers["class_counts"].items()},
                   np.array(answers["confidence_edges"], float), np.array(answers["confidence_counts"], float))


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of `actual` counts against `expected` counts on the same bins."""
    p = np.maximum(expected / max(expected.sum(), 1), EPS)
    q = np.maximum(actual / max(actual.sum(), 1), EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def binned_ks(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic over bin edges and its asymptotic p-value from the effective sample size (binning
    can only lower the statistic, so the test is conservative)."""
    n, m = float(expected.sum()), float(actual.sum())
    if n == 0 or m == 0:
        return 0.0, 1.0
    d = float(np.max(np.abs(np.cumsum(expected) / n - np.cumsum(actual) / m)))
    ne = n * m / (n + m)
    return d, float(kstwobign.sf((math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d))


def chi2_two_sample(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """Chi-squared test that two samples of class counts share one distribution (classes empty in both dropped)."""
    table = np.array([expected, actual], float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    result = chi2_contingency(table, correction=False)
    return float(result.statistic), float(result.pvalue)


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class Check:
    """One compared distribution (a feature, the predicted classes or the confidence) with its evidence: the
    reference's and the window's counts on the same bins (`bins`: edges, or class labels)."""

    name: str
    test: str  # ks (binned two-sample Kolmogorov-Smirnov) or chi2 (two-sample chi-squared)
    psi: float
    statistic: float
    p: float
    p_holm: float
    drifted: bool
    bins: list
    reference: list[float]
    window: list[float]


@dataclass
class VersionDrift:
    """One version's verdict over the window: `status` is drift, no drift or cannot judge."""

    model_name: str
    model_version: str
    status: str
    rows: int
    records: int
    first_time: float | None
    last_time: float | None
    reasons: list[str]
    features: list[Check] = field(default_factory=list)  # most drifted first
    prediction: list[Check] = field(default_factory=list)  # predicted classes, confidence (when the reference has them)
    confidence_mean: float | None = None
    timeline: dict = field(default_factory=dict)  # predicted-class counts per time bucket
    redacted_rows: int = 0  # rows logged without their inputs ([monitoring] drop_fields, hash_fields): no feature check


@dataclass
class Verdict:
    """The monitor's answer: `status` (drift / no drift / cannot judge), the reasons, the window and the evidence."""

    status: str
    reasons: list[str]
    window: dict
    versions: list[VersionDrift]
    thresholds: dict

    @property
    def exit_code(self) -> int:
        return {"no drift": 0, "drift": 1}.get(self.status, 2)

    def to_dict(self) -> dict:
        return asdict(self)

    def brief(self, limit: int = 5) -> list[str]:
        """The reasons with at most `limit` checks per version (the most drifted first) and how many more there are."""
        found = []
        for v in self.versions:
            found += v.reasons[:limit + 1]
            if len(v.reasons) > limit + 1:
                found.append(f"v{v.model_version}: {len(v.reasons) - limit - 1} more; every check is in the evidence")
        of_versions = {r for v in self.versions for r in v.reasons}
        return found + [r for r in self.reasons if r not in of_versions]

    @classmethod
    def from_dict(cls, data: dict) -> "Verdict":
        """The inverse of `to_dict` (the report notebook hands its verdict back as JSON)."""
        versions = [VersionDrift(**{**v, "features": [Check(**c) for c in v["features"]],
                                    "prediction": [Check(**c) for c in v["prediction"]]}) for v in data["versions"]]
        return cls(data["status"], data["reasons"], data["window"], versions, data["thresholds"])


class _Timeline:
    """Predicted-class counts per time bucket; the bucket width doubles when there would be too many."""

    def __init__(self) -> None:
        self.width, self.buckets = 60.0, {}

    def add(self, t: float, labels: list) -> None:
        start = math.floor(t / self.width) * self.width
        self.buckets.setdefault(start, Counter()).update(map(str, labels))
        if len(self.buckets) > TIMELINE_BUCKETS:
            self.width *= 2
            merged: dict[float, Counter] = {}
            for begin, counts in self.buckets.items():
                merged.setdefault(math.floor(begin / self.width) * self.width, Counter()).update(counts)
            self.buckets = merged

    def to_dict(self) -> dict:
        return {"bucket_seconds": self.width,
                "buckets": [{"start": t, "counts": dict(sorted(c.items()))} for t, c in sorted(self.buckets.items())]}


class _Window:
    """Bounded accumulator for one version: binned feature counts, predicted classes, confidences, timeline."""

    def __init__(self, reference: Reference):
        self.ref = reference
        self.inner = reference.edges[:, 1:-1]  # interior edges: np.histogram's bins, out-of-range to the end bins
        self.bins = reference.counts.shape[1]
        self.counts = np.zeros_like(reference.counts)
        self.labels: Counter = Counter()
        self.confidence_edges = (reference.confidence_edges if reference.confidence_edges is not None
                                 else np.linspace(0, 1, 21))
        self.confidence = np.zeros(len(self.confidence_edges) - 1)
        self.confidence_sum = 0.0
        self.timeline = _Timeline()
        self.rows = self.records = self.redacted = 0
        self.first = self.last = None
        self.buffer: list[list[float]] = []
        self.confidences: list[float] = []

    def add(self, record: dict) -> None:
        self.records += 1
        t = record.get("time")
        if t is not None:
            self.first = t if self.first is None else min(self.first, t)
            self.last = t if self.last is None else max(self.last, t)
            self.timeline.add(t, record["labels"])
        inputs = record.get("inputs")
        if isinstance(inputs, list):
            self.buffer.extend(inputs)
        else:  # dropped (null) or hashed (a string): only the answers can be judged
            self.redacted += len(record["labels"])
        self.labels.update(str(label) for label in record["labels"])
        self.confidences.extend(record.get("confidence") or ())
        if len(self.buffer) >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.confidences:
            c = np.asarray(self.confidences, float)
            self.confidences = []
            self.confidence += np.histogram(np.clip(c, self.confidence_edges[0], self.confidence_edges[-1]),
                                            self.confidence_edges)[0]
            self.confidence_sum += float(c.sum())
        if not self.buffer:
            return
        x = np.asarray(self.buffer, float)
        self.buffer = []
        if x.ndim != 2 or x.shape[1] != len(self.ref.features):
            raise ValueError(f"logged rows have {x.shape[-1]} values, the reference has {len(self.ref.features)} "
                             "features")
        self.rows += len(x)
        nan = np.isnan(x)
        idx = (x[:, :, None] >= self.inner[None]).sum(axis=2)
        idx = np.where(nan, -1, idx + np.arange(x.shape[1]) * self.bins).ravel()
        self.counts += np.bincount(idx[idx >= 0], minlength=self.counts.size).reshape(self.counts.shape)


def _checks(window: _Window, features: bool) -> list[tuple]:
    """(name, test, bins, reference counts, window counts, statistic, p) for each feature (when `features`), then
    each prediction check the reference has."""
    ref = window.ref
    found = [(name, "ks", ref.edges[i].tolist(), ref.counts[i], window.counts[i], *binned_ks(ref.counts[i],
                                                                                              window.counts[i]))
             for i, name in enumerate(ref.features) if features]
    if ref.class_counts is not None:
        classes = sorted(set(ref.class_counts) | set(window.labels))
        expected = np.array([ref.class_counts.get(c, 0) for c in classes], float)
        actual = np.array([window.labels.get(c, 0) for c in classes], float)
        found.append((CLASSES, "chi2", classes, expected, actual, *chi2_two_sample(expected, actual)))
    if ref.confidence_counts is not None:
        found.append((CONFIDENCE, "ks", ref.confidence_edges.tolist(), ref.confidence_counts, window.confidence,
                      *binned_ks(ref.confidence_counts, window.confidence)))
    return found


def _judge(name: str, version: str, window: _Window, *, psi_threshold: float, ks_alpha: float,
           min_rows: int) -> VersionDrift:
    window.flush()
    conf_n = window.confidence.sum()
    rows = window.rows + window.redacted
    base = dict(model_name=name, model_version=version, rows=rows, records=window.records,
                first_time=window.first, last_time=window.last, timeline=window.timeline.to_dict(),
                confidence_mean=window.confidence_sum / conf_n if conf_n else None, redacted_rows=window.redacted)
    skipped = [f"v{version}: feature checks skipped: {window.redacted} of {rows} rows were logged without their "
               f"inputs ([monitoring] drop_fields / hash_fields), {window.rows} with ({min_rows} needed)"
               ] if window.redacted and window.rows < min_rows else []
    if rows < min_rows or (skipped and window.ref.class_counts is None and window.ref.confidence_counts is None):
        why = f"{rows} rows logged, {min_rows} needed ([monitoring] min_rows)" if rows < min_rows else \
            "the inputs are redacted and this version's reference profile holds no answers to compare"
        return VersionDrift(status="cannot judge", reasons=[f"v{version}: {why}", *skipped], **base)
    found = _checks(window, features=not skipped)
    adjusted = holm([c[-1] for c in found])
    checks = []
    for (check, test, bins, expected, actual, statistic, p), p_holm in zip(found, adjusted):
        value = psi(expected, actual)
        checks.append(Check(check, test, value, statistic, p, p_holm, value > psi_threshold and p_holm < ks_alpha,
                            bins, expected.tolist(), actual.tolist()))
    n_checked = 0 if skipped else len(window.ref.features)
    features, prediction = checks[:n_checked], checks[n_checked:]
    features.sort(key=lambda c: (not c.drifted, -c.psi))
    drifted = [c for c in prediction + features if c.drifted]
    reasons = [f"{c.name}: PSI {c.psi:.2f} > {psi_threshold:g} and {c.test.upper()} p={c.p_holm:.2g} after Holm "
               f"(< {ks_alpha:g})" for c in drifted]
    n_features = sum(c.drifted for c in features)
    if drifted:
        moved = [c.name for c in prediction if c.drifted]
        lead = f"v{version}: " + "; ".join([f"{n_features} of {len(features)} features drifted"] * bool(features) +
                                           [f"{' and '.join(moved)} drifted"] * bool(moved))
    else:
        lead = f"v{version}: no check over both thresholds" + (
            f" (largest feature PSI {features[0].psi:.2f})" if features else "")
    partly = [f"v{version}: features judged on the {window.rows} rows logged with their inputs, not the "
              f"{window.redacted} redacted ones"] if window.redacted and not skipped else []
    more = skipped + partly + ([] if prediction else
                               ["predictions reported only: this version's reference profile holds no answers"])
    return VersionDrift(status="drift" if drifted else "no drift", reasons=[lead, *reasons, *more], features=features,
                        prediction=prediction, **base)


_CACHE: dict[tuple, Reference] = {}


def registry_reference(settings) -> Callable[[str, str], Reference]:
    """A loader of each version's reference (its registered `reference_profile.json`), fetched once per version."""
    from mlops_nb.registry import REFERENCE_PROFILE, fetch_version

    def load(model_name: str, version: str) -> Reference:
        key = (settings.tracking_uri, model_name, version)
        if key not in _CACHE:
            with tempfile.TemporaryDirectory() as tmp:
                folder, card = fetch_version(model_name, version, Path(tmp) / "model", settings)
                profile = json.loads((folder / REFERENCE_PROFILE).read_text())
            _CACHE[key] = Reference.from_profile(profile, card.features)
        return _CACHE[key]

    return load


def monitor(paths: Iterable[Path | str], reference: Callable[[str, str], Reference], *, psi_threshold: float = 0.2,
            ks_alpha: float = 0.01, min_rows: int = 200, since: float | None = None,
            until: float | None = None) -> Verdict:
    """Stream the log files (oldest first), keep the champion records answered in [since, until) (Unix times; None =
    open), judge each model version against its own reference (`reference(model_name, version)`)."""
    paths = [Path(p) for p in paths]
    thresholds = {"psi_threshold": psi_threshold, "ks_alpha": ks_alpha, "min_rows": min_rows, "correction": "holm"}
    counts: dict = {}
    windows: dict[tuple[str, str], _Window] = {}
    other_roles: Counter = Counter()
    outside = 0
    started = time.perf_counter()
    for record in iter_prediction_log(paths, counts):
        t = record.get("time")
        if t is not None and ((since is not None and t < since) or (until is not None and t >= until)):
            outside += 1
            continue
        if record.get("role", "champion") != "champion":
            other_roles[record.get("role")] += 1
            continue
        key = (record["model_name"], str(record["model_version"]))
        if key not in windows:
            windows[key] = _Window(reference(*key))
        windows[key].add(record)
    versions = [_judge(name, version, w, psi_threshold=psi_threshold, ks_alpha=ks_alpha, min_rows=min_rows)
                for (name, version), w in windows.items()]
    firsts = [v.first_time for v in versions if v.first_time is not None]
    lasts = [v.last_time for v in versions if v.last_time is not None]
    window = {"files": [str(p) for p in paths], "since": since, "until": until,
              "first_time": min(firsts, default=None), "last_time": max(lasts, default=None),
              "rows": sum(v.rows for v in versions), "records": sum(v.records for v in versions),
              "redacted_rows": sum(v.redacted_rows for v in versions),
              "versions": [v.model_version for v in versions], "torn_lines": counts.get("torn", 0),
              "outside_window": outside, "skipped_roles": dict(other_roles),
              "seconds": round(time.perf_counter() - started, 3)}
    statuses = {v.status for v in versions}
    status = "drift" if "drift" in statuses else "no drift" if "no drift" in statuses else "cannot judge"
    reasons = [r for v in versions for r in v.reasons]
    if not paths:
        reasons = ["no prediction log found: serve the model with [monitoring] log_predictions = true"]
    elif not versions:
        reasons = [f"no champion records in {', '.join(map(str, paths))}" + (" in the window" if outside else "") +
                   f": {min_rows} rows needed ([monitoring] min_rows)"]
    if window["torn_lines"]:
        reasons.append(f"skipped {window['torn_lines']} torn line(s) that do not parse")
    return Verdict(status, reasons, window, versions, thresholds)


def check(settings, files: list[Path], *, since: float | None = None, until: float | None = None) -> Verdict:
    """`monitor` with the project's `[monitoring]` thresholds and each version's registered reference."""
    m = settings.monitoring
    return monitor(files, registry_reference(settings), psi_threshold=m.psi_threshold, ks_alpha=m.ks_alpha,
                   min_rows=m.min_rows, since=since, until=until)


def record_verdict(verdict: Verdict, settings) -> dict[str, str]:
    """Write the evidence (`products/evidence/monitor.json`), the flag (`products/monitor/drift.flag`: written on
    drift, removed on no drift, left as it was when the monitor cannot judge), the `mlops_nb_drift` gauge per judged
    version (`products/monitor/drift.prom`, Prometheus' text format for node_exporter's textfile collector) and the
    `mlops_nb.drift` tags on each judged version. Returns where each went."""
    from datetime import datetime, timezone

    from mlops_nb.contracts import TAG_PREFIX
    from mlops_nb.products import atomic_path, write_json
    from mlops_nb.tracking import connect

    checked = datetime.now(timezone.utc)
    now = checked.isoformat(timespec="seconds")
    folder = settings.products_dir / "monitor"
    evidence = settings.products_dir / "evidence" / "monitor.json"
    flag, gauge = folder / "drift.flag", folder / DRIFT_GAUGE
    write_json(evidence, {**verdict.to_dict(), "checked_at": now})
    if verdict.status == "drift":
        with atomic_path(flag) as tmp:
            tmp.write_text(f"drift found {now}\n" + "\n".join(verdict.reasons) + "\n")
    elif verdict.status == "no drift":
        flag.unlink(missing_ok=True)
    judged = [v for v in verdict.versions if v.status != "cannot judge"]
    if judged:
        _write_gauge(gauge, judged, checked.timestamp())
        client = connect(settings)
        for v in judged:
            client.set_model_version_tag(v.model_name, v.model_version, TAG_PREFIX + "drift",
                                         "true" if v.status == "drift" else "false")
            client.set_model_version_tag(v.model_name, v.model_version, TAG_PREFIX + "drift_checked_at", now)
    return {"evidence": str(evidence), "flag": str(flag) if flag.exists() else "",
            "gauge": str(gauge) if gauge.exists() else ""}


def _write_gauge(path: Path, judged: list[VersionDrift], checked: float) -> None:
    """`mlops_nb_drift` (1 drift, 0 none) and its check time per judged version, written atomically."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    from mlops_nb.contracts import METRICS

    registry = CollectorRegistry()
    labels = ["model_name", "model_version"]
    drift = Gauge(METRICS["drift"], "1 when the last `mlops-nb monitor` found drift in this version's traffic, else 0",
                  labels, registry=registry)
    when = Gauge(METRICS["drift_checked"], "Unix time of that check", labels, registry=registry)
    for v in judged:
        drift.labels(v.model_name, v.model_version).set(float(v.status == "drift"))
        when.labels(v.model_name, v.model_version).set(checked)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
