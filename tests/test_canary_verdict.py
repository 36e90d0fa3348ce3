"""`mlops-nb compare` on canary traffic: simulated logs with known labels give promote, keep or roll back, and
`--apply` acts through the ledger of a real MLflow registry and the stop file the served process obeys."""

import json

import numpy as np
import orjson
import pytest
from conftest import register
from test_ledger import cli

from mlops_nb.canary_verdict import KEEP, PROMOTE, ROLL_BACK, judge_canary, label_metric
from mlops_nb.compare import read_labels
from mlops_nb.contracts import CANARY_STOP_FILE, PredictionRecord
from mlops_nb.ledger import entries, verify
from mlops_nb.registry import CHALLENGER, champion
from mlops_nb.research.evaluate import classification_metrics
from mlops_nb.settings import load_settings

CLASSES = 10


def traffic(folder, seed, accuracy, *, requests=1000, failure_rate=None, versions=("1", "2")):
    """A prediction log of `requests` single-row requests per version (champion, canary), each answered right
    with that version's `accuracy`, or failed (a fallback record) with its `failure_rate`; and the labels file."""
    rng = np.random.default_rng(seed)
    records, labels = [], ["request_id,label"]
    for role, version, right, failing in zip(("champion", "canary"), versions, accuracy, failure_rate or (0, 0)):
        for i in range(requests):
            truth = int(rng.integers(CLASSES))
            answer = truth if rng.random() < right else int((truth + rng.integers(1, CLASSES)) % CLASSES)
            record = {"request_id": f"{role}-{i}", "time": 1.7e9 + i, "model_name": "gate-test",
                      "model_version": version, "role": role, "inputs": [[0.0] * 4], "labels": [answer],
                      "confidence": [0.9], "latency_ms": 1.0}
            if rng.random() < failing:
                record |= {"role": "fallback", "model_version": "0", "fallback_reason": "error",
                           "failed_version": version}
            records.append(PredictionRecord.model_validate(record).model_dump(mode="json"))
            labels.append(f"{role}-{i},{truth}")
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "predictions.jsonl"
    log.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rng.permutation(records)))
    (folder / "labels.csv").write_text("\n".join(labels) + "\n")
    return log, folder / "labels.csv"


def project(tmp_path, text=""):
    (tmp_path / "settings.ini").write_text(text)
    return load_settings(tmp_path, environ={})


def judge(log, labels_file, settings):
    return judge_canary(log, read_labels(labels_file) if labels_file else None, settings)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_the_metric_from_a_confusion_matrix_is_the_gates_metric():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 5, 300)  # class 5 never true: answered only
    answered = np.where(rng.random(300) < 0.6, truth, rng.integers(0, 6, 300))
    probabilities = np.eye(6)[answered] * 0.9 + 0.1 / 6
    confusion = np.zeros((6, 6))
    np.add.at(confusion, (truth, answered), 1)
    expected = classification_metrics(truth, probabilities)
    for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert label_metric(metric, confusion) == pytest.approx(expected[metric], abs=1e-12), metric
    with pytest.raises(ValueError, match="roc_auc needs each row's probabilities"):
        label_metric("roc_auc", confusion)


def test_a_better_canary_is_promoted_and_a_worse_one_rolled_back(tmp_path):
    settings = project(tmp_path)
    better = judge(*traffic(tmp_path / "better", 0, (0.85, 0.92)), settings)
    assert better.verdict == PROMOTE and better.difference > 0 and better.p_value < settings.serving.canary_alpha
    for figures in (better.champion, better.canary):
        assert figures.low < figures.metric < figures.high and figures.labelled_rows == 1000
    assert better.champion.high < better.canary.high and better.champion.low < better.canary.low
    worse = judge(*traffic(tmp_path / "worse", 0, (0.92, 0.85)), settings)
    assert worse.verdict == ROLL_BACK and worse.exit_code == 1 and "significantly worse" in worse.reason
    assert worse.difference < 0 and worse.p_value < settings.serving.canary_alpha


def test_equal_versions_are_kept_for_each_of_20_seeds(tmp_path):
    settings = project(tmp_path)  # the default canary_alpha, 0.01
    verdicts = [judge(*traffic(tmp_path / str(seed), seed, (0.9, 0.9), requests=500), settings)
                for seed in range(20)]
    assert [v.verdict for v in verdicts] == [KEEP] * 20, [v.reason for v in verdicts if v.verdict != KEEP]
    assert all("no significant difference" in v.reason for v in verdicts)


@pytest.mark.engines
def test_false_verdicts_on_equal_versions_stay_near_canary_alpha(tmp_path):
    settings = project(tmp_path)  # the default canary_alpha 0.01: about 2 of 200 expected, 8 is 4.3 sd above
    verdicts = [judge(*traffic(tmp_path / str(seed), seed, (0.9, 0.9), requests=500), settings).verdict
                for seed in range(100, 300)]
    assert sum(v != KEEP for v in verdicts) <= 8, verdicts


def test_a_failing_canary_is_rolled_back_without_labels(tmp_path):
    settings = project(tmp_path, "[serving]\ncanary_min_requests = 300\ncanary_max_excess_failure_rate = 0.02\n")
    failing = judge(traffic(tmp_path / "a", 1, (0.9, 0.9), failure_rate=(0.01, 0.06))[0], None, settings)
    assert failing.verdict == ROLL_BACK and "> canary_max_excess_failure_rate 0.02" in failing.reason
    assert failing.canary.requests == 1000 and 0.04 < failing.canary.failure_rate - failing.champion.failure_rate
    few = judge(traffic(tmp_path / "b", 1, (0.9, 0.9), requests=200, failure_rate=(0.0, 0.1))[0], None, settings)
    assert few.verdict == KEEP and "too few labelled rows" in few.reason  # 200 routed < canary_min_requests
    within = judge(traffic(tmp_path / "c", 1, (0.9, 0.9), failure_rate=(0.01, 0.01))[0], None, settings)
    assert within.verdict == KEEP
    dead = judge(traffic(tmp_path / "d", 1, (0.9, 0.9), failure_rate=(0.0, 1.0))[0], None, settings)
    assert dead.verdict == ROLL_BACK and dead.canary.version == "2" and dead.canary.failure_rate == 1.0


def test_apply_rolls_back_through_the_ledger_and_the_stop_file_then_promotes(registry, monkeypatch, capsys):
    settings, onnx_path = registry
    v1, _ = register(settings, onnx_path, 0.95)
    v2, gates = register(settings, onnx_path, 0.93)  # regresses by 0.02 > max_regression 0.01: challenger only
    v1, v2 = str(v1), str(v2)
    assert not gates.passed and str(champion("gate-test", settings).version) == v1
    log, labels = traffic(settings.root / "worse", 4, (0.92, 0.85), versions=(v1, v2))

    code, out = cli(settings, monkeypatch, capsys, "compare", "--log", str(log), "--labels", str(labels))
    assert code == 1 and "ROLL BACK: significantly worse" in out.out, out
    assert "accuracy [low, high]" in out.out and not (log.parent / CANARY_STOP_FILE).exists()
    before = len(entries("gate-test", settings))
    code, out = cli(settings, monkeypatch, capsys, "compare", "--log", str(log), "--labels", str(labels), "--apply")
    assert code == 1 and f"removed the {CHALLENGER} alias from v{v2}" in out.out, out
    last = entries("gate-test", settings)[-1]
    assert (last.seq, last.alias, last.from_version, last.to_version) == (before + 1, CHALLENGER, v2, None)
    assert last.reason.startswith("canary rolled back: significantly worse")
    assert last.gates["canary"]["version"] == v2 and last.gates["p_value"] < 0.05 and last.gates["difference"] < 0
    assert verify("gate-test", settings) == []
    stop = json.loads((log.parent / CANARY_STOP_FILE).read_text())
    assert stop["model_version"] == v2 and "significantly worse" in stop["reason"]
    code, out = cli(settings, monkeypatch, capsys, "compare", "--log", str(log), "--labels", str(labels), "--apply")
    assert code == 1 and "already rolled back" in out.out and len(entries("gate-test", settings)) == before + 1

    log, labels = traffic(settings.root / "better", 4, (0.85, 0.92), versions=(v1, v2))
    code, out = cli(settings, monkeypatch, capsys, "compare", "--log", str(log), "--labels", str(labels), "--apply",
                    "--json")
    assert code == 3 and json.loads(out.out)["applied"].startswith(f"not promoted: the gates refuse v{v2}")
    ini = settings.root / "settings.ini"
    ini.write_text(ini.read_text().replace("max_regression = 0.01", "max_regression = 0.05"))
    code, out = cli(settings, monkeypatch, capsys, "compare", "--log", str(log), "--labels", str(labels), "--apply")
    assert code == 0 and f"promoted v{v2}" in out.out and str(champion("gate-test", settings).version) == v2
    last = entries("gate-test", settings)[-1]
    assert (last.alias, last.from_version, last.to_version) == ("champion", v1, v2) and last.gates["passed"]
    assert last.reason.startswith("canary verdict: significantly better") and verify("gate-test", settings) == []


def test_bad_input_is_a_clear_error(monkeypatch, capsys, tmp_path):
    settings = project(tmp_path)
    code, out = cli(settings, monkeypatch, capsys, "compare", "--log", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "no prediction log at" in out.err and "Traceback" not in out.err
    log = tmp_path / "shadow.jsonl"
    log.write_text('{"request_id": "a", "role": "champion", "model_version": "1", "labels": [1]}\n')
    code, out = cli(settings, monkeypatch, capsys, "compare", "--log", str(log), "--apply")
    assert code == 2 and "holds no canary traffic" in out.err
    only = traffic(tmp_path / "only-canary", 0, (0.9, 0.9), requests=5)[0]
    only.write_bytes(b"".join(line + b"\n" for line in only.read_bytes().splitlines() if b'"canary"' in line))
    code, out = cli(settings, monkeypatch, capsys, "compare", "--log", str(only), "--json")
    assert code == 2 and json.loads(out.out)["reason"].startswith("no champion traffic")
