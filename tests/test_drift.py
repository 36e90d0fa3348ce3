"""Drift monitor: clean traffic passes, shifted traffic is flagged, against the reference registered with the version.

Traffic is the built project's test split resampled with replacement (digits-specific shifts live here, not in the
library). Measured with WINDOW = 500 rows: 0 of 20 clean seeds flagged; 20 of 20 flagged for brightness +2,
Gaussian noise (sd 2) and a class-mix shift (classes 0-2 only), each clipped to the training range.
"""

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
from conftest import BIN, prediction_log, project_env, served_answers, served_session

from mlops_nb.drift import (CLASSES, CONFIDENCE, TIMELINE_BUCKETS, Reference, Verdict, _Timeline, monitor,
                             registry_reference)
from mlops_nb.research.data import read_snapshot
from mlops_nb.research.validate import feature_profile
from mlops_nb.settings import load_settings

WINDOW = 500
SEEDS = range(20)


@pytest.fixture(scope="module")
def project(built_project):
    """The built project's registered version, its registry reference and its test split."""
    root = built_project
    products = root / "products"
    manifest = json.loads((products / "snapshot" / "manifest.json").read_text())
    split = json.loads((products / "snapshot" / "split.json").read_text())
    reg = json.loads((products / "register" / "registration.json").read_text())
    frame = read_snapshot(manifest["path"], manifest["sha256"]).iloc[split["test"]]
    settings = load_settings(root, environ={})
    load = registry_reference(settings)
    ref = load(reg["model_name"], str(reg["version"]))
    x = frame.drop(columns=[manifest["target"]]).to_numpy(float)
    return {"session": served_session(root), "root": root, "name": reg["model_name"], "version": str(reg["version"]),
            "load": load, "reference": ref,
            "x": x, "y": frame[manifest["target"]].to_numpy(), "high": float(ref.edges[:, -1].max()),
            "features": manifest["features"]}


def sample(p, seed, shift=None, n=WINDOW):
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(p["y"] < 3) if shift == "class-mix" else np.arange(len(p["y"]))
    idx = rng.choice(pool, n)
    x = p["x"][idx]
    if shift == "brightness":
        x = np.clip(x + 2, 0, p["high"])
    elif shift == "noise":
        x = np.clip(x + rng.normal(0, 2, x.shape), 0, p["high"])
    return x, served_answers(p["session"], x)


def judge(p, path, load=None):
    return monitor([path], load or p["load"], psi_threshold=0.2, ks_alpha=0.01, min_rows=200)


def test_clean_traffic_is_not_flagged_over_20_seeds(project, tmp_path):
    flagged = [seed for seed in SEEDS
               if judge(project, prediction_log(tmp_path / "log.jsonl", *sample(project, seed), name=project["name"],
                                           version=project["version"])).status != "no drift"]
    assert flagged == [], f"false positives on clean traffic: seeds {flagged} of {len(SEEDS)}"


@pytest.mark.parametrize("shift", ["brightness", "noise", "class-mix"])
def test_each_shift_is_flagged_over_20_seeds(project, tmp_path, shift):
    missed = []
    for seed in SEEDS:
        verdict = judge(project, prediction_log(tmp_path / "log.jsonl", *sample(project, seed, shift),
                                                name=project["name"], version=project["version"]))
        if verdict.status != "drift":
            missed.append(seed)
    assert missed == [], f"{shift}: missed at seeds {missed}"
    assert verdict.reasons[0].startswith(f"v{project['version']}: ")
    assert "PSI" in verdict.reasons[1] and "after Holm" in verdict.reasons[1]
    assert verdict.versions[0].features[0].drifted and verdict.window["skipped_roles"] == {"shadow": WINDOW // 10}
    moved = {c.name for c in verdict.versions[0].prediction if c.drifted}
    if shift == "class-mix":
        assert CLASSES in moved and any(r.startswith(f"{CLASSES}: PSI") for r in verdict.reasons)


def test_clean_traffic_matches_the_registered_answers(project, tmp_path):
    """The reference's answers (the served variant on the test split) and clean traffic's agree: both prediction
    checks are there, with their bins, and neither drifts."""
    verdict = judge(project, prediction_log(tmp_path / "log.jsonl", *sample(project, 8), name=project["name"],
                                       version=project["version"]))
    checks = verdict.versions[0].prediction
    assert [(c.name, c.test, c.drifted) for c in checks] == [(CLASSES, "chi2", False), (CONFIDENCE, "ks", False)]
    assert sum(checks[0].reference) == len(project["y"]) and sum(checks[0].window) == WINDOW
    assert verdict.versions[0].confidence_mean > 0.5


def test_torn_last_line_and_rotated_files_are_read_in_order(project, tmp_path):
    from mlops_nb.monitoring import log_files

    log = tmp_path / "predictions.jsonl"
    x, y = sample(project, 0)
    kw = {"name": project["name"], "version": project["version"]}
    prediction_log(tmp_path / "predictions.jsonl.2", x[:100], y[:100], start=0, **kw)
    prediction_log(tmp_path / "predictions.jsonl.1", x[100:300], y[100:300], start=100, torn=True, **kw)
    prediction_log(log, x[300:], y[300:], start=300, torn=True, **kw)
    files = log_files(log)
    assert [f.name for f in files] == ["predictions.jsonl.2", "predictions.jsonl.1", "predictions.jsonl"]
    verdict = monitor(files, project["load"])
    assert verdict.status == "no drift", verdict.reasons
    assert verdict.window["rows"] == WINDOW and verdict.window["torn_lines"] == 2
    assert (verdict.window["first_time"], verdict.window["last_time"]) == (1.7e9, 1.7e9 + WINDOW - 1)
    assert "skipped 2 torn line(s)" in verdict.reasons[-1]


def test_each_version_is_compared_against_its_own_reference(project, tmp_path):
    """A second version is SIMULATED (no second registration): its reference is the profile of brightened rows.
    Brightened traffic is normal for it and drift for v1; clean traffic the other way round."""
    bright = np.clip(project["x"] + 2, 0, project["high"])
    ref2 = Reference.from_profile(feature_profile(pd.DataFrame(bright, columns=project["features"])),
                                  project["features"])

    def load(name, version):
        return ref2 if version == "v2" else project["load"](name, version)

    x, y = sample(project, 1)
    xb, yb = sample(project, 2, "brightness")
    kw = {"name": project["name"]}
    paths = [prediction_log(tmp_path / "a.jsonl", x, y, version=project["version"], **kw),
             prediction_log(tmp_path / "b.jsonl", xb, yb, version="v2", start=WINDOW, **kw)]
    verdict = monitor(paths, load)
    assert {v.model_version: v.status for v in verdict.versions} == {project["version"]: "no drift", "v2": "no drift"}
    swapped = [prediction_log(tmp_path / "a.jsonl", xb, yb, version=project["version"], **kw),
               prediction_log(tmp_path / "b.jsonl", x, y, version="v2", start=WINDOW, **kw)]
    verdict = monitor(swapped, load)
    assert {v.model_version: v.status for v in verdict.versions} == {project["version"]: "drift", "v2": "drift"}
    assert verdict.window["versions"] == [project["version"], "v2"] and verdict.window["rows"] == 2 * WINDOW


def gauge(root) -> dict:
    """`mlops_nb_drift` per (model, version) from the monitor's Prometheus text file."""
    from prometheus_client.parser import text_string_to_metric_families

    text = (root / "products" / "monitor" / "drift.prom").read_text()
    return {(s.labels["model_name"], s.labels["model_version"]): s.value
            for family in text_string_to_metric_families(text) if family.name == "mlops_nb_drift"
            for s in family.samples}


def test_cli_exit_codes_flag_evidence_and_registry_tag(project, tmp_path):
    root = project["root"]
    flag, evidence = root / "products" / "monitor" / "drift.flag", root / "products" / "evidence" / "monitor.json"
    kw = {"name": project["name"], "version": project["version"]}

    def run(*args):
        return subprocess.run([str(BIN / "mlops-nb"), "monitor", *args], cwd=root, env=project_env(root),
                              capture_output=True, text=True, timeout=120)

    shifted = run("--log", str(prediction_log(tmp_path / "shifted.jsonl", *sample(project, 3, "brightness"), **kw)),
                  "--no-report")
    assert shifted.returncode == 1, shifted.stderr
    assert shifted.stdout.startswith("DRIFT: ") and flag.exists() and "report" not in shifted.stdout
    assert json.loads(evidence.read_text())["status"] == "drift"
    assert gauge(root) == {(project["name"], project["version"]): 1.0}

    from mlflow import MlflowClient

    from mlops_nb.tracking import connect

    connect(load_settings(root, environ={}))
    tags = MlflowClient().get_model_version(project["name"], project["version"]).tags
    assert tags["mlops_nb.drift"] == "true" and "mlops_nb.drift_checked_at" in tags

    clean = run("--log", str(prediction_log(tmp_path / "clean.jsonl", *sample(project, 4), **kw)), "--json",
                "--no-report")
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["status"] == "no drift" and not flag.exists()
    assert gauge(root) == {(project["name"], project["version"]): 0.0}
    assert MlflowClient().get_model_version(project["name"], project["version"]).tags["mlops_nb.drift"] == "false"

    few = run("--log", str(prediction_log(tmp_path / "few.jsonl", *sample(project, 5, n=20), **kw)), "--no-report")
    assert few.returncode == 2 and "20 rows logged, 200 needed" in few.stdout
    missing = run("--log", str(tmp_path / "none.jsonl"), "--no-report")
    assert missing.returncode == 2 and "no prediction log found" in missing.stdout


def test_since_until_choose_the_window(project, tmp_path):
    x, a = sample(project, 9, n=1000)
    path = prediction_log(tmp_path / "log.jsonl", x, a, name=project["name"], version=project["version"], shadow=False)
    verdict = monitor([path], project["load"], since=1.7e9 + 200, until=1.7e9 + 700)
    w = verdict.window
    assert (w["rows"], w["outside_window"], w["first_time"], w["last_time"]) == (500, 500, 1.7e9 + 200, 1.7e9 + 699)
    timeline = verdict.versions[0].timeline
    assert sum(sum(b["counts"].values()) for b in timeline["buckets"]) == 500 and timeline["bucket_seconds"] == 60
    assert Verdict.from_dict(json.loads(json.dumps(verdict.to_dict()))) == verdict
    empty = monitor([path], project["load"], since=1.7e9 + 5000)
    assert empty.status == "cannot judge" and "in the window" in empty.reasons[0]


def test_timeline_stays_bounded_and_keeps_every_count():
    timeline = _Timeline()
    for minute in range(10 * 24 * 60):  # ten days, one answer a minute
        timeline.add(1.7e9 + 60 * minute, [minute % 3])
    found = timeline.to_dict()
    assert len(found["buckets"]) <= TIMELINE_BUCKETS and found["bucket_seconds"] in {60 * 2 ** k for k in range(12)}
    assert sum(sum(b["counts"].values()) for b in found["buckets"]) == 10 * 24 * 60
