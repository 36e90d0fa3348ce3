"""Drift monitor: each served version's logged rows against the reference profile registered with that version."""

# The log is streamed; per version only binned counts on the reference's bins, predicted-class counts and a
# confidence histogram are kept, so memory does not grow with the window. A feature drifts when its PSI exceeds
# `psi_threshold` AND its binned two-sample KS p-value, Holm-corrected across features, is below `ks_alpha`
# (`[monitoring]`). Holm controls the chance of any false alarm (what a retrain signal needs) under any dependence
# between features, which neighbouring pixels or correlated columns have; Benjamini-Hochberg would bound a share of
# false features instead. (At most 3 docstring lines: nbdev-export lists longer module docstrings in __init__.py.)

from __future__ import annotations

import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import chisquare, kstwobign

from mlops_nb.monitoring import iter_prediction_log

__all__ = ["Reference", "FeatureDrift", "VersionDrift", "Verdict", "monitor", "registry_reference", "psi",
           "binned_ks", "holm"]

CHUNK_ROWS = 8192
CONFIDENCE_BINS = 20
EPS = 1e-4  # share floor in PSI, so an empty bin on either side gives a large but finite term


@dataclass(frozen=True)
class Reference:
    """What a version is compared against: its features, bin edges and counts, optional class shares."""

    features: list[str]
    edges: np.ndarray  # (features, bins + 1)
    counts: np.ndarray  # (features, bins)
    class_share: dict[str, float] | None = None
    confidence_mean: float | None = None

    @classmethod
    def from_profile(cls, profile: dict, features: list[str]) -> "Reference":
        """From `feature_profile` output (02_validate) as registered in `reference_profile.json`."""
        stats = [profile["features"][name] for name in features]
        shares = profile.get("class_share")
        edges, counts = (np.array([s[key] for s in stats], float) for key in ("edges", "counts"))
        return cls(features, edges, counts, {str(k): float(v) for k, v in shares.items()} if shares else None,
                   profile.get("confidence", {}).get("mean"))


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


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class FeatureDrift:
    feature: str
    psi: float
    ks_statistic: float
    ks_p: float
    ks_p_holm: float
    drifted: bool


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
    features: list[FeatureDrift] = field(default_factory=list)  # most drifted first
    prediction: dict = field(default_factory=dict)


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


class _Window:
    """Bounded accumulator for one version: binned feature counts, predicted classes, confidence histogram."""

    def __init__(self, reference: Reference):
        self.ref = reference
        self.inner = reference.edges[:, 1:-1]  # interior edges: np.histogram's bins, out-of-range to the end bins
        self.bins = reference.counts.shape[1]
        self.counts = np.zeros_like(reference.counts)
        self.missing = np.zeros(len(reference.features), np.int64)
        self.labels: Counter = Counter()
        self.confidence = np.zeros(CONFIDENCE_BINS, np.int64)
        self.confidence_sum = 0.0
        self.rows = self.records = 0
        self.first = self.last = None
        self.buffer: list[list[float]] = []

    def add(self, record: dict) -> None:
        self.records += 1
        t = record.get("time")
        if t is not None:
            self.first = t if self.first is None else min(self.first, t)
            self.last = t if self.last is None else max(self.last, t)
        self.buffer.extend(record["inputs"])
        self.labels.update(str(label) for label in record["labels"])
        conf = record.get("confidence") or []
        if conf:
            c = np.asarray(conf, float)
            self.confidence += np.bincount(np.clip((c * CONFIDENCE_BINS).astype(int), 0, CONFIDENCE_BINS - 1),
                                           minlength=CONFIDENCE_BINS)
            self.confidence_sum += float(c.sum())
        if len(self.buffer) >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        x = np.asarray(self.buffer, float)
        self.buffer = []
        if x.ndim != 2 or x.shape[1] != len(self.ref.features):
            raise ValueError(f"logged rows have {x.shape[-1]} values, the reference has {len(self.ref.features)} "
                             "features")
        self.rows += len(x)
        nan = np.isnan(x)
        self.missing += nan.sum(axis=0)
        idx = (x[:, :, None] >= self.inner[None]).sum(axis=2)
        idx = np.where(nan, -1, idx + np.arange(x.shape[1]) * self.bins).ravel()
        self.counts += np.bincount(idx[idx >= 0], minlength=self.counts.size).reshape(self.counts.shape)


def _prediction(window: _Window, psi_threshold: float) -> tuple[dict, list[str], bool]:
    """Predicted-class shares and confidence against the reference's when it has them; else reported only."""
    total = sum(window.labels.values()) or 1
    shares = {k: v / total for k, v in sorted(window.labels.items())}
    conf_n = int(window.confidence.sum())
    found = {"class_share": shares, "confidence_mean": window.confidence_sum / conf_n if conf_n else None,
             "confidence_histogram": window.confidence.tolist()}
    ref = window.ref.class_share
    if not ref:
        return found, [], False
    classes = sorted(set(ref) | set(shares))
    expected = np.array([ref.get(c, 0.0) for c in classes])
    actual = np.array([window.labels.get(c, 0) for c in classes], float)
    value = psi(expected, actual)
    chi = chisquare(actual, np.maximum(expected, EPS) / np.maximum(expected, EPS).sum() * actual.sum())
    found.update(psi=value, chi2_p=float(chi.pvalue), reference_class_share=ref)
    if window.ref.confidence_mean is not None and found["confidence_mean"] is not None:
        found["confidence_shift"] = found["confidence_mean"] - window.ref.confidence_mean
    if value > psi_threshold:
        return found, [f"predicted classes: PSI {value:.2f} > {psi_threshold:g} against the reference shares"], True
    return found, [], False


def _judge(name: str, version: str, window: _Window, *, psi_threshold: float, ks_alpha: float,
           min_rows: int) -> VersionDrift:
    window.flush()
    base = dict(model_name=name, model_version=version, rows=window.rows, records=window.records,
                first_time=window.first, last_time=window.last)
    if window.rows < min_rows:
        return VersionDrift(status="cannot judge", reasons=[f"v{version}: {window.rows} rows logged, {min_rows} "
                                                            "needed ([monitoring] min_rows)"], **base)
    ref = window.ref
    tests = [binned_ks(ref.counts[i], window.counts[i]) for i in range(len(ref.features))]
    adjusted = holm([p for _, p in tests])
    features = []
    for i, feature in enumerate(ref.features):
        value = psi(ref.counts[i], window.counts[i])
        drifted = value > psi_threshold and adjusted[i] < ks_alpha
        features.append(FeatureDrift(feature, value, tests[i][0], tests[i][1], adjusted[i], drifted))
    features.sort(key=lambda f: (not f.drifted, -f.psi))
    reasons = [f"{f.feature}: PSI {f.psi:.2f} > {psi_threshold:g} and KS p={f.ks_p_holm:.2g} after Holm "
               f"(< {ks_alpha:g})" for f in features if f.drifted]
    prediction, more, predicted_drift = _prediction(window, psi_threshold)
    drifted = bool(reasons) or predicted_drift
    if not window.ref.class_share:
        more.append("predicted classes reported only: the reference profile holds no class shares")
    status = "drift" if drifted else "no drift"
    lead = (f"v{version}: {sum(f.drifted for f in features)} of {len(features)} features drifted"
            if drifted else f"v{version}: no feature over both thresholds (largest PSI {features[0].psi:.2f})")
    return VersionDrift(status=status, reasons=[lead, *reasons, *more], features=features, prediction=prediction,
                        **base)


_CACHE: dict[tuple, Reference] = {}


def registry_reference(settings) -> Callable[[str, str], Reference]:
    """A loader of each version's reference (its registered `reference_profile.json`), fetched once per version."""
    import json

    from mlops_nb.registry import fetch_version

    def load(model_name: str, version: str) -> Reference:
        key = (settings.tracking_uri, model_name, version)
        if key not in _CACHE:
            with tempfile.TemporaryDirectory() as tmp:
                folder, card = fetch_version(model_name, version, Path(tmp) / "model", settings)
                profile = json.loads((folder / "extra_files" / "reference_profile.json").read_text())
            _CACHE[key] = Reference.from_profile(profile, card.features)
        return _CACHE[key]

    return load


def monitor(paths: Iterable[Path | str], reference: Callable[[str, str], Reference], *, psi_threshold: float = 0.2,
            ks_alpha: float = 0.01, min_rows: int = 200) -> Verdict:
    """Stream the log files (oldest first), keep champion records, judge each model version against its own
    reference (`reference(model_name, version)`)."""
    paths = [Path(p) for p in paths]
    thresholds = {"psi_threshold": psi_threshold, "ks_alpha": ks_alpha, "min_rows": min_rows, "correction": "holm"}
    counts: dict = {}
    windows: dict[tuple[str, str], _Window] = {}
    other_roles: Counter = Counter()
    started = time.perf_counter()
    for record in iter_prediction_log(paths, counts):
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
    window = {"files": [str(p) for p in paths], "first_time": min(firsts, default=None),
              "last_time": max(lasts, default=None), "rows": sum(v.rows for v in versions),
              "records": sum(v.records for v in versions), "versions": [v.model_version for v in versions],
              "torn_lines": counts.get("torn", 0), "skipped_roles": dict(other_roles),
              "seconds": round(time.perf_counter() - started, 3)}
    statuses = {v.status for v in versions}
    status = "drift" if "drift" in statuses else "no drift" if "no drift" in statuses else "cannot judge"
    reasons = [r for v in versions for r in v.reasons]
    if not paths:
        reasons = ["no prediction log found: serve the model with [monitoring] log_predictions = true"]
    elif not versions:
        reasons = [f"no champion records in {', '.join(map(str, paths))}: {min_rows} rows needed ([monitoring] "
                   "min_rows)"]
    if window["torn_lines"]:
        reasons.append(f"skipped {window['torn_lines']} torn line(s) that do not parse")
    return Verdict(status, reasons, window, versions, thresholds)


def record_verdict(verdict: Verdict, settings) -> dict[str, str]:
    """Write the evidence (`products/evidence/monitor.json`), the flag (`products/monitor/drift.flag`: written on
    drift, removed on no drift, left as it was when the monitor cannot judge) and the `mlops_nb.drift` tags on each
    judged version. Returns where each went."""
    from datetime import datetime, timezone

    from mlops_nb.contracts import TAG_PREFIX
    from mlops_nb.products import write_json
    from mlops_nb.tracking import connect

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    evidence = settings.products_dir / "evidence" / "monitor.json"
    flag = settings.products_dir / "monitor" / "drift.flag"
    write_json(evidence, {**verdict.to_dict(), "checked_at": now})
    if verdict.status == "drift":
        flag.parent.mkdir(parents=True, exist_ok=True)
        flag.write_text(f"drift found {now}\n" + "\n".join(verdict.reasons) + "\n")
    elif verdict.status == "no drift":
        flag.unlink(missing_ok=True)
    judged = [v for v in verdict.versions if v.status != "cannot judge"]
    if judged:
        client = connect(settings)
        for v in judged:
            client.set_model_version_tag(v.model_name, v.model_version, TAG_PREFIX + "drift",
                                         "true" if v.status == "drift" else "false")
            client.set_model_version_tag(v.model_name, v.model_version, TAG_PREFIX + "drift_checked_at", now)
    return {"evidence": str(evidence), "flag": str(flag) if flag.exists() else ""}
