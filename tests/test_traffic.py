"""Traffic generator: seeded, shifted, clipped synthetic rows; then the build's split sent to the served bento, and
the monitor judging clean and shifted windows of it."""

import json
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import BIN, project_env

from mlops_nb.monitoring import read_prediction_log
from mlops_nb.serving.bento import free_port
from mlops_nb.settings import load_settings
from mlops_nb.traffic import SHIFTS, TrafficError, held_out_split, run, send, traffic

LOW, HIGH = 0.0, 10.0
COMMON = 2  # the most common class of Y (not the first label, not the first row's)


def synthetic(n=3000, seed=0):
    """Rows with room inside [LOW, HIGH]: feature 0 is the class (0, 1, 2), 1-3 uniform in [4, 6], 4 constant."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, n, p=[0.3, 0.2, 0.5])
    x = np.column_stack([y, rng.uniform(4, 6, (n, 3)), np.full(n, 5.0)]).astype(float)
    return x, y


X, Y = synthetic()


def make(shift, size=0.5, seed=0, rows=20_000, x=X, y=Y):
    return traffic(x, y, rows=rows, shift=shift, size=size, seed=seed, low=LOW, high=HIGH)


@pytest.mark.parametrize("shift", SHIFTS)
def test_traffic_is_deterministic_per_seed_and_differs_across_seeds(shift):
    first = make(shift, seed=1, rows=500)
    assert first.shape == (500, X.shape[1]) and first.dtype == np.float64
    assert np.array_equal(first, make(shift, seed=1, rows=500))
    assert not np.array_equal(first, make(shift, seed=2, rows=500))


@pytest.mark.parametrize("shift, size", [("none", 0), ("offset", 1.0), ("noise", 5.0), ("class-mix", 1.0)])
def test_traffic_is_clipped_to_the_bounds_even_when_the_data_is_not(shift, size):
    x = X.copy()
    x[::7, 1], x[::11, 2] = -3.0, 25.0  # outside [LOW, HIGH] before any shift
    out = make(shift, size=size, x=x)
    assert out.min() >= LOW and out.max() <= HIGH
    assert HIGH in out and (shift != "none" or LOW in out)  # clipped, not dropped


def test_offset_adds_size_times_the_range_to_every_value():
    clean, shifted = make("none"), make("offset", size=0.1)
    assert np.allclose(shifted - clean, 0.1 * (HIGH - LOW))  # same rows: offset draws nothing more
    assert shifted[:, 1:4].mean() == pytest.approx(clean[:, 1:4].mean() + 1.0)
    assert np.all(make("offset", size=1.0) == HIGH)  # moved past the top, clipped


def test_noise_raises_the_spread_by_size_times_each_features_std():
    clean, noisy = make("none"), make("noise", size=1.0)
    ratio = noisy[:, 1:4].std(axis=0) / clean[:, 1:4].std(axis=0)
    assert np.all((ratio > 1.35) & (ratio < 1.48)), ratio  # sqrt(1 + 1**2) = 1.41: the noise's sd is the std
    assert np.all(noisy[:, 4] == 5.0)  # a constant feature stays constant
    assert noisy[:, 1:4].mean() == pytest.approx(5.0, abs=0.05)


def test_class_mix_makes_the_most_common_class_the_share_asked_for():
    base = np.mean(Y == COMMON)
    for size in (0.0, 0.5, 1.0):
        share = np.mean(make("class-mix", size=size)[:, 0] == COMMON)
        assert share == pytest.approx(size + (1 - size) * base, abs=0.015), size
    shares = np.bincount(make("class-mix", size=0.5)[:, 0].astype(int), minlength=3) / 20_000
    assert shares == pytest.approx([0.15, 0.1, 0.75], abs=0.015)  # the others keep their proportions


@pytest.mark.parametrize("kwargs, argument", [({"shift": "brightness"}, "shift"), ({"size": -0.1}, "size"),
                                              ({"size": float("nan")}, "size"),
                                              ({"shift": "class-mix", "size": 1.5}, "size"), ({"rows": 0}, "rows")])
def test_bad_arguments_raise_a_value_error_naming_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"^{argument} must be"):
        make(**{"shift": "offset", **kwargs})


def test_no_build_products_is_a_clear_error(tmp_path):
    (tmp_path / "settings.ini").write_text("[registry]\nmodel_name = t\n")
    with pytest.raises(TrafficError, match="run a build first: ploomber build"):
        held_out_split(load_settings(tmp_path, environ={}))


def test_requests_that_get_no_answer_are_counted_not_raised():
    status = send(f"http://127.0.0.1:{free_port()}", make("none", rows=40), batch=16, concurrency=2, timeout_s=5)
    assert status == {"error": 3}


def test_offset_traffic_reaches_the_served_bento_and_its_prediction_log(server, built_project):
    url, _, predictions = server
    settings = load_settings(built_project, environ={})
    summary = run(settings, url, rows=200, shift="offset", size=0.1, seed=0, batch=16, concurrency=4, api_key=None)
    assert summary["status"] == {200: 13} and (summary["rows"], summary["requests"]) == (200, 13)
    assert summary["started"] <= summary["finished"] and summary["shift"] == "offset"

    def sent() -> list[dict]:
        return [r for r in read_prediction_log(predictions) if r["role"] == "champion"
                and summary["started"] <= r["time"] <= summary["finished"]]

    for _ in range(100):  # the writer thread appends in the background
        if predictions.exists() and sum(len(r["inputs"]) for r in sent()) >= 200:
            break
        time.sleep(0.1)
    records = sent()
    assert len(records) == 13 and {r["model_version"] for r in records} == {summary["model_version"]}
    card = httpx.get(f"{url}/model/metadata", timeout=10).json()
    x, y, features = held_out_split(settings)
    assert features == card["features"]
    expected = traffic(x, y, rows=200, shift="offset", size=0.1, seed=0, low=card["feature_min"],
                       high=card["feature_max"])
    assert sorted(row for r in records for row in r["inputs"]) == sorted(expected.tolist())  # the very rows sent
    assert np.mean(expected) > np.mean(np.clip(x, card["feature_min"], card["feature_max"]))  # brighter


def test_clean_then_shifted_traffic_is_judged_by_one_command_with_a_report(server, built_project):
    """Done-when of the monitoring issue: serve, send clean then shifted traffic (`mlops-nb traffic`), run
    `mlops-nb monitor` on each window: the clean one passes, the shifted one is flagged, with the HTML report
    (verdict first, figures embedded) logged to MLflow with the version."""
    url, _, predictions = server

    def cli(*args):
        done = subprocess.run([str(BIN / "mlops-nb"), *args], cwd=built_project, env=project_env(built_project),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode in (0, 1), done.stderr
        return done.returncode, json.loads(done.stdout)

    _, clean = cli("traffic", "--url", url, "--rows", "600", "--seed", "11", "--json")
    _, shifted = cli("traffic", "--url", url, "--rows", "600", "--shift", "offset", "--size", "0.1", "--seed", "12",
                     "--json")
    time.sleep(1)  # the log writer appends in the background
    code, passed = cli("monitor", "--log", str(predictions), "--since", str(clean["started"]), "--until",
                       str(shifted["started"]), "--json")
    assert (code, passed["status"], passed["window"]["rows"]) == (0, "no drift", 600), passed["reasons"]
    checks = passed["versions"][0]["prediction"]
    assert [(c["name"], c["drifted"]) for c in checks] == [("predicted classes", False), ("confidence", False)]
    code, flagged = cli("monitor", "--log", str(predictions), "--since", str(shifted["started"]), "--json")
    assert (code, flagged["status"], flagged["window"]["rows"]) == (1, "drift", 600)
    assert flagged["versions"][0]["model_version"] == shifted["model_version"] and flagged["flag"]

    page = Path(flagged["report"]).read_text()
    page = page[page.index("<body"):]  # nbconvert's stylesheet embeds images of its own
    assert page.index("DRIFT") < page.index("data:image/png;base64,") and page.count("data:image/png;base64,") >= 3
    assert "Drift found" in page and "Traceback" not in page

    from mlflow import MlflowClient

    from mlops_nb.tracking import connect

    connect(load_settings(built_project, environ={}))
    client = MlflowClient()
    logged = {a.path for a in client.list_artifacts(flagged["report_run"], "monitor")}
    assert logged == {"monitor/report.html", "monitor/monitor_report.ipynb", "monitor/verdict.json"}
    version = client.get_model_version(flagged["versions"][0]["model_name"], shifted["model_version"])
    assert version.tags["mlops_nb.drift_report_run"] == flagged["report_run"]
    assert version.tags["mlops_nb.drift"] == "true"
