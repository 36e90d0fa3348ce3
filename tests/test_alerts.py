"""`mlops-nb export alerts`: the rules and scrape config pass promtool's checks, each alert fires on its fault and stays
quiet without it (`promtool test rules`), and a real Prometheus fires one from a fault of a served bento."""

import json
import re
import subprocess
import time

import httpx
import pytest
import yaml
from conftest import BIN, bento_tag, debian_command, project_env, running

from mlops_nb.alerts import ALERT_NAMES, CONFIG_FILE, RULES_FILE
from mlops_nb.cli import main
from mlops_nb.contracts import METRICS
from mlops_nb.serving.bento import free_port, served

# the unit-test settings: rates over 5 minutes, promtool's series one sample a minute
ALERTS = {"window_s": 300, "for_s": 120, "scrape_interval_s": 60, "max_error_rate": 0.05, "max_p99_latency_ms": 250,
          "max_fallback_rate": 0.02, "max_dropped_log_records": 0}
BENTO = {"instance": "127.0.0.1:3000", "job": "mlops-nb"}
LAST = "within the last 300 s"


def export(tmp_path, monkeypatch, capsys, **alerts) -> tuple[int, str, str]:
    """`mlops-nb export alerts OUT` in a project whose settings.ini holds `alerts` as its [alerts] section."""
    (tmp_path / "settings.ini").write_text("[alerts]\n" + "".join(f"{k} = {v}\n" for k, v in alerts.items()))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLOPS_NB_ROOT", str(tmp_path))
    code = main(["export", "alerts", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    return code, out, err


def promtool(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([debian_command("promtool", "prometheus"), *args], cwd=cwd, capture_output=True, text=True)


def test_exported_rules_and_scrape_config_pass_promtool_and_use_only_the_projects_metrics(tmp_path, monkeypatch,
                                                                                           capsys):
    code, out, err = export(tmp_path, monkeypatch, capsys, **ALERTS, target="bento.internal:3000",
                            drift_target="127.0.0.1:9100")
    assert code == 0, err
    out_dir = tmp_path / "out"
    assert out.split() == [str(out_dir / RULES_FILE), str(out_dir / CONFIG_FILE)]
    checked = promtool("check", "config", CONFIG_FILE, cwd=out_dir)  # checks the rule files it loads as well
    assert checked.returncode == 0 and "SUCCESS: 6 rules found" in checked.stdout, checked.stdout + checked.stderr
    config = yaml.safe_load((out_dir / CONFIG_FILE).read_text())
    assert config["global"] == {"scrape_interval": "60s", "evaluation_interval": "15s"}
    assert [(job["job_name"], job["static_configs"][0]["targets"]) for job in config["scrape_configs"]] == [
        ("mlops-nb", ["bento.internal:3000"]), ("mlops-nb-drift", ["127.0.0.1:9100"])]
    rules = yaml.safe_load((out_dir / RULES_FILE).read_text())["groups"][0]["rules"]
    assert tuple(rule["alert"] for rule in rules) == ALERT_NAMES
    for rule in rules:
        assert rule["annotations"]["runbook"] == f"docs/runbook.md#{rule['alert'].lower()}"
        assert rule["labels"]["severity"] in ("critical", "warning") and rule["annotations"]["summary"]
        used = {re.sub("_bucket$", "", name) for name in re.findall(r"\bmlops_nb_\w+", rule["expr"])}
        assert used and used <= set(METRICS.values()) and "bentoml" not in rule["expr"], rule["expr"]


def test_a_scrape_config_without_a_drift_target_scrapes_the_bento_only(tmp_path, monkeypatch, capsys):
    assert export(tmp_path, monkeypatch, capsys)[0] == 0
    config = yaml.safe_load((tmp_path / "out" / CONFIG_FILE).read_text())
    assert [job["static_configs"][0]["targets"] for job in config["scrape_configs"]] == [["127.0.0.1:3000"]]
    assert promtool("check", "config", CONFIG_FILE, cwd=tmp_path / "out").returncode == 0


@pytest.mark.parametrize("alerts, expected", [
    ({"window_s": 20, "scrape_interval_s": 15}, "[alerts]: window_s = 20 is shorter than two scrapes"),
    ({"target": "bento"}, "[alerts] target = 'bento'"),
    ({"max_error_rate": 0}, "[alerts] max_error_rate = '0': Input should be greater than 0"),
    ({"for_s": "2m"}, "[alerts] for_s = '2m': Input should be a valid integer"),
])
def test_bad_alert_settings_exit_2_naming_the_setting(tmp_path, monkeypatch, capsys, alerts, expected):
    code, out, err = export(tmp_path, monkeypatch, capsys, **alerts)
    assert code == 2 and expected in err and "Traceback" not in err and out == ""
    assert not (tmp_path / "out").exists()


def test_an_outdir_that_is_a_file_exits_2_saying_so(tmp_path, monkeypatch, capsys):
    (tmp_path / "out").write_text("")
    code, _, err = export(tmp_path, monkeypatch, capsys)
    assert code == 2 and f"cannot write the alerts to {tmp_path / 'out'}" in err and "Traceback" not in err


def fired(alert: str, summary: str, severity: str = "warning", **labels) -> dict:
    return {"exp_labels": {"severity": severity, **labels},
            "exp_annotations": {"summary": summary, "runbook": f"docs/runbook.md#{alert.lower()}"}}


def cases(alert: str, *checks) -> list[dict]:
    """`alert_rule_test` entries: (eval_time, expected alert or None) per check; None = nothing fires."""
    return [{"eval_time": at, "alertname": alert, "exp_alerts": [fired(alert, **e)] if e else []} for at, e in checks]


def requests(route: str, status: int) -> str:
    return f'{METRICS["requests"]}{{route="{route}",status="{status}",instance="127.0.0.1:3000",job="mlops-nb"}}'


def bucket(le: str) -> str:
    return f'{METRICS["latency"]}_bucket{{route="/predict",le="{le}",instance="127.0.0.1:3000",job="mlops-nb"}}'


def labelled(metric: str, labels: dict) -> str:
    return metric + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


# per alert: input series (promtool's expanding notation: `a+bxN` is N+1 samples, one a minute) and checks
UNIT_TESTS = {
    # /predict answers 90 200s a minute throughout, and 10 500s a minute from minute 11 (10% from minute 15);
    # above 5% from minute 13, firing after for_s = 2 minutes; /explain never fails
    "MlopsNbHighErrorRate": (
        {requests("/predict", 200): "0+90x20", requests("/predict", 500): "0x10 10+10x9",
         requests("/explain", 200): "0+10x20"},
        [("8m", None), ("14m", None),
         ("20m", {"summary": f"/predict: 10% of answers are 5xx {LAST} (alert above 5%)", "severity": "critical",
                  "route": "/predict"})]),
    # 100 requests a minute, all under 0.1 s until minute 10; then half take 0.25-1 s: p99 = 0.25 + 0.75 * 49/50
    "MlopsNbHighP99Latency": (
        {bucket("0.1"): "0+100x10 1050+50x9", bucket("0.25"): "0+100x10 1050+50x9", bucket("1"): "0+100x20",
         bucket("+Inf"): "0+100x20"},
        [("8m", None), ("20m", {"summary": f"/predict: p99 request time 985 ms {LAST} (alert above 250 ms)",
                                "route": "/predict"})]),
    # 100 routed requests a minute; from minute 11, 5 a minute fail their version (answered by the previous champion)
    "MlopsNbHighFallbackRate": (
        {labelled(METRICS["scored"], {"model_version": "3", "role": "champion", **BENTO}): "0+100x20",
         labelled(METRICS["fallback"], {"reason": "timeout", "outcome": "answered", **BENTO}): "0x10 5+5x9"},
        [("8m", None), ("20m", {"summary": f"5% of routed requests failed their model version {LAST} (alert above "
                                           "2%)", "severity": "critical"})]),
    # 3 records dropped a minute in minutes 6-10, then none: fires at once, quiet once the window holds no drop
    "MlopsNbPredictionLogDropping": (
        {labelled(METRICS["log_dropped"], BENTO): "0x5 3+3x4 15x10"},
        [("5m", None), ("8m", {"summary": f"127.0.0.1:3000: about 9 prediction-log records dropped {LAST} (answers "
                                          "were sent; monitoring and canary verdicts miss them)",
                               "instance": "127.0.0.1:3000"}),
         ("17m", None)]),
    # `mlops-nb monitor` finds drift in version 3's traffic from minute 6; version 2 never drifts
    "MlopsNbDriftDetected": (
        {labelled(METRICS["drift"], {"model_name": "digits-classifier", "model_version": "3"}): "0x5 1x5",
         labelled(METRICS["drift"], {"model_name": "digits-classifier", "model_version": "2"}): "0x10"},
        [("3m", None), ("8m", {"summary": "digits-classifier version 3: the last `mlops-nb monitor` found drift in "
                                          "its traffic", "model_name": "digits-classifier", "model_version": "3"})]),
    # the served process stops routing to its canary at minute 11
    "MlopsNbCanaryRolledBack": (
        {labelled(METRICS["canary_rollbacks"], BENTO): "0x10 1x10"},
        [("10m", None), ("12m", {"summary": f"127.0.0.1:3000: the canary was rolled back (routing to it stopped) "
                                            f"{LAST}", "instance": "127.0.0.1:3000"}),
         ("20m", None)]),
}


def test_every_alert_has_a_unit_test():
    assert tuple(UNIT_TESTS) == ALERT_NAMES


@pytest.mark.parametrize("alert", UNIT_TESTS)
def test_each_alert_fires_on_its_fault_and_stays_quiet_without_it(tmp_path, monkeypatch, capsys, alert):
    assert export(tmp_path, monkeypatch, capsys, **ALERTS)[0] == 0
    series, checks = UNIT_TESTS[alert]
    (tmp_path / "out" / "test.yml").write_text(yaml.safe_dump({
        "rule_files": [RULES_FILE], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series.items()],
                   "alert_rule_test": cases(alert, *checks)}]}))
    result = promtool("test", "rules", "test.yml", cwd=tmp_path / "out")
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def prometheus_api(url: str, path: str, **params) -> list:
    answer = httpx.get(f"{url}/api/v1/{path}", params=params, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["alerts"] if path == "alerts" else answer["data"]["result"]


def poll(what, until, timeout_s: float = 180):
    """`what()` again every half second until `until(value)` holds; the last value (a failure after timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while not until(value := what()):
        assert time.monotonic() < deadline, f"not reached after {timeout_s} s: {value}"
        time.sleep(0.5)
    return value


@pytest.mark.engines
def test_a_real_prometheus_fires_the_dropped_records_alert_from_a_served_bento(built_project, tmp_path):
    """The bento's prediction log cannot be written (its folder is a file): requests are answered, records dropped,
    and Prometheus, scraping /metrics every second, fires MlopsNbPredictionLogDropping and nothing else."""
    prometheus = debian_command("prometheus")
    (tmp_path / "a-file").write_text("")
    env = project_env(built_project, MLOPS_NB_MONITORING_PREDICTION_LOG=str(tmp_path / "a-file/predictions.jsonl"))
    with served(bento_tag(built_project), cwd=built_project, env=env, log=tmp_path / "serve.log") as bento:
        overrides = {"MLOPS_NB_ALERTS_TARGET": bento.removeprefix("http://"), "MLOPS_NB_ALERTS_SCRAPE_INTERVAL_S": "1",
                     "MLOPS_NB_ALERTS_EVALUATION_INTERVAL_S": "1", "MLOPS_NB_ALERTS_WINDOW_S": "30"}
        subprocess.run([str(BIN / "mlops-nb"), "export", "alerts", str(tmp_path / "alerts")], cwd=built_project,
                       env=project_env(built_project, **overrides), check=True, capture_output=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [prometheus, f"--config.file={tmp_path / 'alerts' / CONFIG_FILE}", f"--web.listen-address=127.0.0.1:"
                   f"{port}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
        with running(command, cwd=tmp_path, env=project_env(built_project), log=tmp_path / "prometheus.log",
                     ready=f"{url}/-/ready"):
            # the counter's 0 is scraped first, so increase() sees the drops as a rise
            poll(lambda: prometheus_api(url, "query", query=METRICS["log_dropped"]),
                 lambda result: [r["value"][1] for r in result] == ["0"])
            answers = [httpx.post(f"{bento}/predict", json={"instances": [[0.0] * 64]}, timeout=60).status_code
                       for _ in range(20)]
            assert answers == [200] * 20
            alerts = poll(lambda: prometheus_api(url, "alerts"),
                          lambda found: any(a["state"] == "firing" for a in found))
    print("Prometheus' /api/v1/alerts:", json.dumps(alerts))
    (alert,) = [a for a in alerts if a["state"] == "firing"]
    assert alert["labels"] == {"alertname": "MlopsNbPredictionLogDropping", "instance": bento.removeprefix("http://"),
                               "severity": "warning"}
    assert alert["annotations"]["runbook"] == "docs/runbook.md#mlopsnbpredictionlogdropping"
    assert re.fullmatch(r"127\.0\.0\.1:\d+: about \d+ prediction-log records dropped within the last 30 s \(.*\)",
                        alert["annotations"]["summary"])
