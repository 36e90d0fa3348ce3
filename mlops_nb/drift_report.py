"""The drift report: a parameterized notebook that papermill runs on a window of the prediction log, as HTML."""

# The notebook (templates/monitor_report.ipynb) computes the verdict with `drift.check` and draws it with the
# functions below; `render` runs it, writes the executed notebook, its HTML (inputs hidden: the verdict comes first)
# and the verdict JSON atomically, and returns the verdict. `log_report` puts all three in one MLflow run.

from __future__ import annotations

import html
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mlops_nb.drift import CLASSES, CONFIDENCE, Check, Verdict, VersionDrift
from mlops_nb.products import atomic_path, read_json

__all__ = ["TEMPLATE", "verdict_html", "plot_features", "plot_timeline", "plot_predictions", "checks_table",
           "render", "log_report", "Report"]

TEMPLATE = Path(__file__).resolve().parent / "templates" / "monitor_report.ipynb"
COLOURS = {"drift": "#b42318", "no drift": "#067647", "cannot judge": "#667085"}
HEADLINES = {"drift": "Drift found: production traffic no longer looks like what this model was trained and "
                      "tested on. Retrain on recent data, or find out what changed upstream.",
             "no drift": "No drift: production traffic looks like what this model was trained and tested on.",
             "cannot judge": "Cannot judge yet: too few logged rows for a verdict."}


def _when(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def verdict_html(verdict: Verdict) -> str:
    """The verdict in plain words, coloured by status, with its reasons and the window it covers."""
    w, t = verdict.window, verdict.thresholds
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in verdict.brief())
    return (f'<div style="border-left:8px solid {COLOURS[verdict.status]};padding:12px 16px;'
            f'background:#f9fafb;font:15px sans-serif">'
            f'<div style="font-size:24px;font-weight:bold;color:{COLOURS[verdict.status]}">'
            f'{verdict.status.upper()}</div><p style="font-size:17px">{html.escape(HEADLINES[verdict.status])}</p>'
            f"<ul>{reasons}</ul><p>Window: {w['rows']} rows in {w['records']} requests, {_when(w['first_time'])} to "
            f"{_when(w['last_time'])}; model versions {', '.join('v' + v for v in w['versions']) or 'none'}. A check "
            f"drifts when its PSI is above {t['psi_threshold']:g} and its test's p-value, Holm-corrected, is below "
            f"{t['ks_alpha']:g}.</p></div>")


def _shares(counts: list[float]) -> np.ndarray:
    counts = np.asarray(counts, float)
    return counts / max(counts.sum(), 1)


def _stairs(ax, check: Check) -> None:
    """The reference's share per bin (grey, filled) and the window's (outlined, red when the check drifted)."""
    ax.stairs(_shares(check.reference), check.bins, fill=True, alpha=0.35, color="#475467", label="reference")
    ax.stairs(_shares(check.window), check.bins, linewidth=2, label="window",
              color=COLOURS["drift" if check.drifted else "no drift"])


def _label(check: Check) -> str:
    return f"{check.name}\nPSI {check.psi:.2f}, p {check.p_holm:.1g}" + (" DRIFT" if check.drifted else "")


def plot_features(version: VersionDrift, top: int = 6):
    """The `top` most drifted features: the reference's share of rows per bin against the window's (None when no
    feature was checked: the log's inputs are redacted)."""
    import matplotlib.pyplot as plt

    checks = version.features[:top]
    if not checks:
        return None
    columns = min(3, len(checks))
    fig, axes = plt.subplots((len(checks) + columns - 1) // columns, columns, figsize=(4 * columns, 3 *
                             ((len(checks) + columns - 1) // columns)), squeeze=False)
    for ax, check in zip(axes.flat, checks):
        _stairs(ax, check)
        ax.set_title(_label(check), fontsize=10)
        ax.set_ylabel("share of rows")
        ax.set_xlabel("value (outside the reference's range: in its end bins)", fontsize=8)
    for ax in list(axes.flat)[len(checks):]:
        ax.axis("off")
    axes.flat[0].legend()
    fig.suptitle(f"v{version.model_version}: the {len(checks)} features that moved most", fontsize=12)
    fig.tight_layout()
    return fig


def plot_timeline(version: VersionDrift):
    """The predicted classes' shares per time bucket (stacked), with the reference's shares at the right."""
    import matplotlib.pyplot as plt

    buckets = version.timeline["buckets"]
    classes = sorted({c for b in buckets for c in b["counts"]} | set(_reference_classes(version)))
    shares = np.array([[b["counts"].get(c, 0) for c in classes] for b in buckets], float)
    shares /= np.maximum(shares.sum(axis=1, keepdims=True), 1)
    times = [datetime.fromtimestamp(b["start"], timezone.utc) for b in buckets]
    fig, ax = plt.subplots(figsize=(11, 3.6))
    colours = plt.get_cmap("tab20")(np.arange(len(classes)) % 20)
    if len(buckets) > 1:
        ax.stackplot(times, shares.T, labels=classes, colors=colours, step="post")
    else:
        bottom = 0.0
        for c, share, colour in zip(classes, shares[0], colours):
            ax.bar(times[0], share, bottom=bottom, width=version.timeline["bucket_seconds"] / 86400, color=colour,
                   label=c, align="edge")
            bottom += share
    reference = _reference_classes(version)
    if reference:
        ref = _shares([reference.get(c, 0) for c in classes])
        ax.barh(np.cumsum(ref) - ref / 2, 0.02, height=ref, left=1.01, transform=ax.get_yaxis_transform(),
                color=colours, clip_on=False)
        ax.text(1.01, 1.02, "ref", transform=ax.transAxes, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of predictions")
    ax.set_title(f"v{version.model_version}: predicted classes over time ({version.timeline['bucket_seconds']:g} s "
                 "buckets)")
    ax.legend(title="class", bbox_to_anchor=(1.06, 1), loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def _reference_classes(version: VersionDrift) -> dict:
    check = next((c for c in version.prediction if c.name == CLASSES), None)
    return dict(zip(check.bins, check.reference)) if check else {}


def plot_predictions(version: VersionDrift):
    """Predicted-class shares and the confidence histogram, reference against window; None when the reference has
    no answers."""
    import matplotlib.pyplot as plt

    if not version.prediction:
        return None
    fig, axes = plt.subplots(1, len(version.prediction), figsize=(6 * len(version.prediction), 3.4), squeeze=False)
    for ax, check in zip(axes.flat, version.prediction):
        if check.name == CLASSES:
            x = np.arange(len(check.bins))
            ax.bar(x - 0.2, _shares(check.reference), 0.4, color="#475467", alpha=0.5, label="reference")
            ax.bar(x + 0.2, _shares(check.window), 0.4, label="window",
                   color=COLOURS["drift" if check.drifted else "no drift"])
            ax.set_xticks(x, check.bins)
            ax.set_xlabel("predicted class")
        elif check.name == CONFIDENCE:
            _stairs(ax, check)
            ax.set_yscale("log")
            ax.set_xlabel("confidence (top probability)")
        ax.set_ylabel("share")
        ax.set_title(_label(check), fontsize=10)
        ax.legend()
    fig.tight_layout()
    return fig


def checks_table(version: VersionDrift):
    """Every check of one version, most drifted first, as a DataFrame."""
    import pandas as pd

    rows = [{"check": c.name, "test": c.test, "PSI": round(c.psi, 4), "statistic": round(c.statistic, 4),
             "p (Holm)": float(f"{c.p_holm:.3g}"), "drifted": c.drifted} for c in version.prediction + version.features]
    return pd.DataFrame(rows).set_index("check")


class Report:
    """Where `render` wrote: the executed notebook, its HTML and the verdict JSON."""

    def __init__(self, folder: Path):
        self.notebook, self.html, self.verdict = (folder / name for name in
                                                  ("monitor_report.ipynb", "report.html", "verdict.json"))


def render(settings, files: list[Path], out: Path, *, since: float | None = None,
           until: float | None = None) -> tuple[Verdict, Report]:
    """Run the monitoring notebook with papermill on the window, write its outputs into `out` (each atomically)."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    report = Report(Path(out))
    with tempfile.TemporaryDirectory() as tmp:
        executed, verdict_path = Path(tmp) / "executed.ipynb", Path(tmp) / "verdict.json"
        papermill.execute_notebook(str(TEMPLATE), str(executed), kernel_name="python3", progress_bar=False,
                                   cwd=str(settings.root), log_output=False,
                                   parameters={"root": str(settings.root), "logs": [str(f) for f in files],
                                               "since": since, "until": until, "verdict_path": str(verdict_path)})
        verdict = Verdict.from_dict(read_json(verdict_path))
        notebook = nbformat.read(executed, as_version=4)
        page, _ = HTMLExporter(exclude_input=True, exclude_input_prompt=True,
                               exclude_output_prompt=True).from_notebook_node(notebook)
        for path, text in [(report.notebook, executed.read_text()), (report.html, page),
                           (report.verdict, verdict_path.read_text())]:
            with atomic_path(path) as part:
                part.write_text(text)
    return verdict, report


def log_report(settings, verdict: Verdict, report: Report) -> str:
    """One MLflow run holding the report, the executed notebook and the verdict, tagged with each judged version;
    each of those versions gets the run's id as its `mlops_nb.drift_report_run` tag. Returns the run id."""
    import mlflow

    from mlops_nb.contracts import TAG_PREFIX
    from mlops_nb.tracking import connect

    client = connect(settings)
    names = sorted({v.model_name for v in verdict.versions})
    tags = {TAG_PREFIX + "task": "monitor", TAG_PREFIX + "drift": verdict.status,
            TAG_PREFIX + "model_name": ",".join(names),
            TAG_PREFIX + "model_versions": ",".join(v.model_version for v in verdict.versions)}
    with mlflow.start_run(tags=tags) as run:
        mlflow.set_tag("mlflow.runName", f"monitor-{run.info.run_id[:8]}")
        mlflow.log_metrics({"window_rows": verdict.window["rows"], "drift": float(verdict.status == "drift"),
                            **{f"v{v.model_version}_drifted_checks": sum(c.drifted for c in v.features + v.prediction)
                               for v in verdict.versions}})
        for path in (report.html, report.notebook, report.verdict):
            mlflow.log_artifact(str(path), artifact_path="monitor")
    for v in verdict.versions:
        client.set_model_version_tag(v.model_name, v.model_version, TAG_PREFIX + "drift_report_run",
                                     run.info.run_id)
    return run.info.run_id
