"""`mlops-nb export alerts`: Prometheus alerting rules on the project's own metrics (contracts.METRICS), thresholds
from [alerts], and a prometheus.yml that scrapes the bento's /metrics and loads them."""

from __future__ import annotations

from pathlib import Path

import yaml

from mlops_nb.contracts import METRICS
from mlops_nb.settings import AlertsSettings, Settings

__all__ = ["RULES_FILE", "CONFIG_FILE", "RUNBOOK", "ALERT_NAMES", "rules", "scrape_config", "export_alerts"]

RULES_FILE = "alerts.yml"
CONFIG_FILE = "prometheus.yml"
RUNBOOK = "docs/runbook.md"  # one section per alert, headed by the alert's name
HEADER = "# written by `mlops-nb export alerts` from settings.ini [alerts]: change the settings and export again\n"


def _alert(name: str, expr: str, summary: str, *, severity: str, for_s: int = 0) -> dict:
    return {"alert": name, "expr": expr, "for": f"{for_s}s", "labels": {"severity": severity},
            "annotations": {"summary": summary, "runbook": f"{RUNBOOK}#{name.lower()}"}}


def rules(alerts: AlertsSettings) -> list[dict]:
    """The alerting rules, each with a severity label and summary and runbook annotations."""
    w, held = f"[{alerts.window_s}s]", alerts.for_s
    requests, over = METRICS["requests"], f"within the last {alerts.window_s} s"
    return [
        _alert("MlopsNbHighErrorRate",
               f'sum by (route) (rate({requests}{{status=~"5.."}}{w})) / sum by (route) (rate({requests}{w})) '
               f"> {alerts.max_error_rate:g}",
               f"{{{{ $labels.route }}}}: {{{{ $value | humanizePercentage }}}} of answers are 5xx {over} "
               f"(alert above {alerts.max_error_rate * 100:g}%)", severity="critical", for_s=held),
        _alert("MlopsNbHighP99Latency",
               f"histogram_quantile(0.99, sum by (route, le) (rate({METRICS['latency']}_bucket{w}))) * 1000 "
               f"> {alerts.max_p99_latency_ms:g}",
               f'{{{{ $labels.route }}}}: p99 request time {{{{ $value | printf "%.0f" }}}} ms {over} (alert above '
               f"{alerts.max_p99_latency_ms:g} ms)", severity="warning", for_s=held),
        _alert("MlopsNbHighFallbackRate",
               f"sum(rate({METRICS['fallback']}{w})) / sum(rate({METRICS['scored']}{w})) "
               f"> {alerts.max_fallback_rate:g}",
               f"{{{{ $value | humanizePercentage }}}} of routed requests failed their model version {over} (alert "
               f"above {alerts.max_fallback_rate * 100:g}%)", severity="critical", for_s=held),
        _alert("MlopsNbPredictionLogDropping",
               f"sum by (instance) (increase({METRICS['log_dropped']}{w})) > {alerts.max_dropped_log_records}",
               f'{{{{ $labels.instance }}}}: about {{{{ $value | printf "%.0f" }}}} prediction-log records dropped '
               f"{over} (answers were sent; monitoring and canary verdicts miss them)", severity="warning"),
        _alert("MlopsNbDriftDetected", f"max by (model_name, model_version) ({METRICS['drift']}) > 0",
               "{{ $labels.model_name }} version {{ $labels.model_version }}: the last `mlops-nb monitor` found "
               "drift in its traffic", severity="warning"),
        _alert("MlopsNbCanaryRolledBack", f"sum by (instance) (increase({METRICS['canary_rollbacks']}{w})) > 0",
               "{{ $labels.instance }}: the canary was rolled back (routing to it stopped) " + over,
               severity="warning"),
    ]


ALERT_NAMES = tuple(rule["alert"] for rule in rules(AlertsSettings()))


def scrape_config(alerts: AlertsSettings) -> dict:
    """prometheus.yml: the bento's /metrics (and the drift textfile's node_exporter, when set), loading RULES_FILE."""
    jobs = [{"job_name": "mlops-nb", "metrics_path": "/metrics", "static_configs": [{"targets": [alerts.target]}]}]
    if alerts.drift_target:
        jobs.append({"job_name": "mlops-nb-drift", "static_configs": [{"targets": [alerts.drift_target]}]})
    return {"global": {"scrape_interval": f"{alerts.scrape_interval_s}s",
                       "evaluation_interval": f"{alerts.evaluation_interval_s}s"},
            "rule_files": [RULES_FILE], "scrape_configs": jobs}


def export_alerts(settings: Settings, outdir: Path) -> list[Path]:
    """Write RULES_FILE and CONFIG_FILE into `outdir` (made when missing); return their paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    documents = {RULES_FILE: {"groups": [{"name": "mlops-nb", "rules": rules(settings.alerts)}]},
                 CONFIG_FILE: scrape_config(settings.alerts)}
    for name, document in documents.items():
        (outdir / name).write_text(HEADER + yaml.safe_dump(document, sort_keys=False, width=120))
    return [outdir / name for name in documents]
