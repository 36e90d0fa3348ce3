"""Canary against champion from the prediction log: failure rates, the [gates] metric on labelled rows with intervals
and a test of the difference, a verdict (promote, keep, roll back), and acting on it through the ledger."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mlops_nb.contracts import CANARY_STOP_FILE
from mlops_nb.monitoring import iter_prediction_log, log_files
from mlops_nb.settings import Settings

__all__ = ["VersionFigures", "CanaryVerdict", "judge_canary", "label_metric", "apply_verdict", "table",
           "RESAMPLES", "PROMOTE", "KEEP", "ROLL_BACK"]

RESAMPLES = 1000  # bootstrap resamples of requests per version (seeded: the same log gives the same verdict)
PROMOTE, KEEP, ROLL_BACK = "promote", "keep", "roll back"
ROUTED = ("champion", "canary")  # roles of records answered by the version the request was routed to


def label_metric(metric: str, confusion: np.ndarray) -> np.ndarray:
    """The [gates] metric of each confusion matrix in `confusion` (..., k, k; rows true, columns answered), as
    `research.evaluate.classification_metrics` computes it from labels (tests hold the two equal). roc_auc needs
    probabilities, which the log does not hold: `ValueError`."""
    diagonal = np.diagonal(confusion, axis1=-2, axis2=-1)
    truths, answers = confusion.sum(axis=-1), confusion.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "accuracy":
            return diagonal.sum(axis=-1) / truths.sum(axis=-1)
        if metric == "balanced_accuracy":  # mean recall over the classes that occur
            return np.nanmean(np.where(truths > 0, diagonal / truths, np.nan), axis=-1)
        if metric == "macro_f1":  # mean F1 over the classes that occur or are answered
            both = truths + answers
            return np.nanmean(np.where(both > 0, 2 * diagonal / both, np.nan), axis=-1)
    raise ValueError(f"[gates] metric = {metric} needs each row's probabilities, and the prediction log holds the "
                     "answered label only: set [gates] metric to accuracy, balanced_accuracy or macro_f1 to judge a "
                     "canary on labels (its failure rate is judged either way)")


@dataclass
class VersionFigures:
    """One version's traffic in the log: requests routed to it, those it failed, its labelled rows and metric."""

    version: str
    role: str
    requests: int = 0
    failures: int = 0
    labelled_rows: int = 0
    metric: float | None = None
    low: float | None = None
    high: float | None = None

    @property
    def failure_rate(self) -> float | None:
        return self.failures / self.requests if self.requests else None


@dataclass
class CanaryVerdict:
    """The champion and canary figures, the difference (canary - champion) with its p-value, and what to do."""

    log: str
    metric: str
    alpha: float
    champion: VersionFigures | None = None
    canary: VersionFigures | None = None
    others: list[VersionFigures] = field(default_factory=list)  # versions of older deploys in the same log
    difference: float | None = None
    p_value: float | None = None
    verdict: str | None = None  # None: cannot judge (no champion traffic)
    reason: str = ""
    torn_lines: int = 0

    @property
    def exit_code(self) -> int:
        return 2 if self.verdict is None else 1 if self.verdict == ROLL_BACK else 0

    def to_dict(self) -> dict:
        def figures(version: VersionFigures | None) -> dict | None:
            return version and {**asdict(version), "failure_rate": version.failure_rate}

        return {**asdict(self), "champion": figures(self.champion), "canary": figures(self.canary),
                "others": [figures(v) for v in self.others]}


@dataclass
class _Traffic:
    """What the streamed log says of one version: counts, and its labelled rows as (request, true, answered)."""

    role: str | None = None  # of its newest routed record; None: seen failing only
    last: int = -1  # position of that record in the log
    requests: int = 0
    failures: int = 0
    rows: list[tuple[int, str, str]] = field(default_factory=list)


def _read(log: Path | str, labels: dict[tuple[str, int], str], counts: dict) -> dict[str, _Traffic]:
    """One streamed pass over the log (and its rotated siblings): memory grows with the labelled rows only."""
    files = log_files(log)
    if not files:
        raise FileNotFoundError(f"no prediction log at {log}")
    traffic = defaultdict(_Traffic)
    for position, record in enumerate(iter_prediction_log(files, counts)):
        role = record.get("role")
        if role == "fallback" and record.get("failed_version"):
            failed = traffic[str(record["failed_version"])]
            failed.requests, failed.failures = failed.requests + 1, failed.failures + 1
        elif role in ROUTED:
            version = traffic[str(record["model_version"])]
            version.role, version.last, version.requests = role, position, version.requests + 1
            for row, answered in enumerate(record["labels"]):
                truth = labels.get((record["request_id"], row))
                if truth is not None:
                    version.rows.append((version.requests, truth, str(answered)))
    return traffic


def _bootstrap(rows: list, classes: dict[str, int], metric: str, rng) -> tuple[float, np.ndarray]:
    """The metric on `rows` and on RESAMPLES resamples of their requests (rows of a request stay together)."""
    k = len(classes)
    requests = np.unique([request for request, _, _ in rows], return_inverse=True)[1]
    cells = np.array([classes[truth] * k + classes[answered] for _, truth, answered in rows])
    point = float(label_metric(metric, np.bincount(cells, minlength=k * k).reshape(k, k)))
    n = requests.max() + 1
    confusion = np.empty((RESAMPLES, k * k))
    for b in range(RESAMPLES):
        weights = np.bincount(rng.integers(0, n, n), minlength=n)[requests]
        confusion[b] = np.bincount(cells, weights=weights, minlength=k * k)
    return point, label_metric(metric, confusion.reshape(RESAMPLES, k, k))


def _pick(traffic: dict[str, _Traffic]) -> tuple[str | None, str | None]:
    """The champion and canary versions: those of the newest record in each role. A version seen only failing is
    the canary when it is not the champion (a canary that fails every request has no record of its own)."""
    def newest(role):
        found = [(t.last, v) for v, t in traffic.items() if t.role == role]
        return max(found)[1] if found else None

    champion = newest("champion")
    canary = newest("canary") or next((v for v, t in traffic.items() if t.role is None and v != champion), None)
    return champion, canary


def _figures(version: str, role: str, traffic: _Traffic) -> VersionFigures:
    return VersionFigures(version, role, traffic.requests, traffic.failures, len(traffic.rows))


def judge_canary(log: Path | str, labels: dict[tuple[str, int], str] | None, settings: Settings) -> CanaryVerdict:
    """Judge the newest canary against the newest champion of the log; `verdict.canary` is None when the log
    holds no canary traffic."""
    serving, metric = settings.serving, settings.gates.metric
    counts = {}
    traffic = _read(log, labels or {}, counts)
    result = CanaryVerdict(str(log), metric, serving.canary_alpha, torn_lines=counts.get("torn", 0))
    champion, canary = _pick(traffic)
    if canary is None:
        return result
    result.canary = _figures(canary, "canary", traffic[canary])
    result.others = [_figures(v, t.role or "canary", t) for v, t in traffic.items() if v not in (champion, canary)]
    if champion is None:
        result.reason = f"no champion traffic in {log} to compare canary v{canary} with"
        return result
    result.champion = _figures(champion, "champion", traffic[champion])
    result.verdict, result.reason = _verdict(result, traffic[champion].rows, traffic[canary].rows, settings)
    return result


def _verdict(result: CanaryVerdict, champion_rows: list, canary_rows: list, settings: Settings) -> tuple[str, str]:
    serving, minimum = settings.serving, settings.monitoring.min_labelled_rows
    champion, canary = result.champion, result.canary
    excess = canary.failure_rate - champion.failure_rate
    failing = (f"v{canary.version} failed {canary.failures} of {canary.requests} requests ({canary.failure_rate:.4f})"
               f", v{champion.version} {champion.failures} of {champion.requests}: excess {excess:+.4f}")
    if excess > serving.canary_max_excess_failure_rate and canary.requests >= serving.canary_min_requests:
        return ROLL_BACK, f"{failing} > canary_max_excess_failure_rate {serving.canary_max_excess_failure_rate}"
    short = [f"v{v.version} has {v.labelled_rows}" for v in (champion, canary) if v.labelled_rows < minimum]
    if short:
        return KEEP, f"too few labelled rows to compare {result.metric}: {', '.join(short)} (min_labelled_rows " \
                     f"{minimum})"
    try:
        _test(result, champion_rows, canary_rows)
    except ValueError as error:
        return KEEP, str(error)
    figures = (f"v{canary.version}'s {result.metric} {canary.metric:.4f} - v{champion.version}'s "
               f"{champion.metric:.4f} = {result.difference:+.4f}, p {result.p_value:.4f}")
    if result.p_value >= result.alpha:
        return KEEP, f"no significant difference: {figures} >= canary_alpha {result.alpha}"
    if result.difference < 0:
        return ROLL_BACK, f"significantly worse: {figures} < canary_alpha {result.alpha}"
    if excess > serving.canary_max_excess_failure_rate:
        return KEEP, f"better on labels ({figures}) but {failing}, over fewer than canary_min_requests " \
                     f"{serving.canary_min_requests}: wait for more traffic"
    return PROMOTE, f"significantly better: {figures} < canary_alpha {result.alpha}"


def _test(result: CanaryVerdict, champion_rows: list, canary_rows: list) -> None:
    """Fill in each version's metric with its percentile interval at 1 - alpha, the difference, and the two-sided
    p-value of the difference against its bootstrap standard error (seeded, every [gates] metric alike)."""
    classes = {c: i for i, c in enumerate(sorted({c for _, *pair in champion_rows + canary_rows for c in pair}))}
    rng = np.random.default_rng(0)
    samples = []
    for figures, rows in ((result.champion, champion_rows), (result.canary, canary_rows)):
        figures.metric, resampled = _bootstrap(rows, classes, result.metric, rng)
        figures.low, figures.high = (float(q) for q in np.nanquantile(resampled, [result.alpha / 2,
                                                                                  1 - result.alpha / 2]))
        samples.append(resampled)
    result.difference = result.canary.metric - result.champion.metric
    spread = float(np.nanstd(samples[1] - samples[0], ddof=1))
    result.p_value = (float(math.erfc(abs(result.difference) / spread / math.sqrt(2))) if spread > 0 else
                      float(result.difference == 0))


def apply_verdict(verdict: CanaryVerdict, settings: Settings) -> tuple[str, bool]:
    """Act on the verdict: promote the canary through the gates and the ledger; or roll it back (the stop file
    beside the log, which the served process obeys, and a ledger entry removing the challenger alias with the
    figures); keep does nothing. Returns what was done and whether it was refused (by the gates)."""
    from mlops_nb.ledger import append, current
    from mlops_nb.products import read_json, write_json
    from mlops_nb.registry import CHALLENGER, champion, promote

    name, canary = settings.registry.model_name, verdict.canary.version
    if verdict.verdict == PROMOTE:
        found = champion(name, settings)
        if found is not None and str(found.version) == canary:
            return f"v{canary} is already the champion", False
        gates, entry = promote(name, canary, reason=f"canary verdict: {verdict.reason}", settings=settings)
        if entry is None:
            return f"not promoted: the gates refuse v{canary}: {gates.reason}", True
        return f"promoted v{canary} (ledger entry #{entry.seq}); serve it: `mlops-nb deploy`", False
    if verdict.verdict != ROLL_BACK:
        return "nothing to do", False
    stop = Path(verdict.log).parent / CANARY_STOP_FILE
    done = []
    if not (stop.is_file() and read_json(stop).get("model_version") == canary):
        write_json(stop, {"model_version": canary, "reason": verdict.reason, "time": time.time()})
        done.append(f"wrote {stop}: the served process stops routing to v{canary}")
    if current(name, CHALLENGER, settings) == canary:
        entry = append(name, alias=CHALLENGER, to_version=None, reason=f"canary rolled back: {verdict.reason}",
                       gates=verdict.to_dict(), settings=settings)
        done.append(f"removed the {CHALLENGER} alias from v{canary} (ledger entry #{entry.seq})")
    return "; ".join(done) or f"v{canary} was already rolled back", False


def table(verdict: CanaryVerdict) -> str:
    """The verdict as text: a line per version, then the verdict with its reason."""
    level = f"{1 - verdict.alpha:.0%}"
    lines = [f"prediction log {verdict.log}: [gates] metric {verdict.metric}, {level} bootstrap intervals over "
             f"requests ({RESAMPLES} resamples), canary_alpha {verdict.alpha}",
             f"{'version':<8} {'role':<9} {'requests':>8} {'failure rate':>12} {'labelled rows':>13}  "
             f"{verdict.metric + ' [low, high]':<28} {'difference':>10} {'p-value':>8}"]
    for figures in filter(None, (verdict.champion, verdict.canary, *verdict.others)):
        rate = "-" if figures.failure_rate is None else f"{figures.failure_rate:.4f}"
        metric = "-" if figures.metric is None else f"{figures.metric:.4f} [{figures.low:.4f}, {figures.high:.4f}]"
        tested = figures is verdict.canary and verdict.p_value is not None
        lines.append(f"{'v' + figures.version:<8} {figures.role:<9} {figures.requests:>8} {rate:>12} "
                     f"{figures.labelled_rows:>13}  {metric:<28} " +
                     (f"{verdict.difference:>+10.4f} {verdict.p_value:>8.4f}" if tested else f"{'':>10} {'':>8}"))
    lines.append(f"verdict  {(verdict.verdict or 'cannot judge').upper()}: {verdict.reason}")
    if verdict.torn_lines:
        lines.append(f"note: {verdict.torn_lines} torn line(s) skipped")
    return "\n".join(line.rstrip() for line in lines)
