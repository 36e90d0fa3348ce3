"""`mlops-nb monitor --labels`: delayed labels joined to the prediction log, accuracy per version and window."""

import json
import os
import subprocess

import numpy as np
import orjson
import pytest
from conftest import BIN, REPO, project_env, register

from mlops_nb.accuracy import LabelIndex, confusion_score
from mlops_nb.cli import main
from mlops_nb.research.evaluate import classification_metrics

HOUR = 3600
T0 = 1_700_000_000 // HOUR * HOUR  # the start of a window (accuracy_window_hours = 1 below)
CLASSES = ["x", "y", "z"]  # conftest's `register` card
MONITORING = "[monitoring]\naccuracy_window_hours = 1\nmax_accuracy_drop = 0.05\nmin_labelled_rows = 40\n"


def window(hour: int) -> str:
    from datetime import datetime, timezone

    def iso(t):
        return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%MZ")

    return f"{iso(T0 + hour * HOUR)} .. {iso(T0 + (hour + 1) * HOUR)}"


def answers(version: str, hour: int, n: int, wrong: int, tag: str = "", **extra) -> tuple[list[dict], list[dict]]:
    """`n` two-row requests answered by `version` in window `hour`; labels for their rows, `wrong` of them not the
    answer given."""
    records, labels = [], []
    for i in range(n):
        request_id = f"v{version}-h{hour}-{i}{tag}"
        answered = [CLASSES[i % 3], CLASSES[(i + 1) % 3]]
        records.append({"schema_version": 1, "request_id": request_id, "time": T0 + hour * HOUR + i,
                        "model_name": "gate-test", "model_version": version, "role": "champion", "subject": None,
                        "inputs": [[0.0] * 4] * 2, "labels": answered, "confidence": [0.9, 0.8], "latency_ms": 1.0,
                        **extra})
        for row, label in enumerate(answered):
            truth = CLASSES[(CLASSES.index(label) + 1) % 3] if 2 * i + row < wrong else label
            labels.append({"request_id": request_id, "row": row, "label": truth})
    return records, labels


def write(path, lines) -> str:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return str(path)


@pytest.fixture
def project(registry, monkeypatch):
    """The registry fixture's project (the working folder) with v1 (test accuracy 0.95, the champion) and v2
    (0.96), windows of an hour, at least 40 labelled rows to judge one, and a prediction log: v1 fine in hours 0 and
    1; v2 fine in hour 0, 75% in hour 1, and 5 requests in hour 2 (too few labels to judge); shadow answers of v1 on
    v2's requests (all wrong); one request v2 failed and v1 answered (fallback, counts for v1); one neither
    answered."""
    settings, onnx_path = registry
    assert [str(register(settings, onnx_path, score)[0]) for score in (0.95, 0.96)] == ["1", "2"]
    with open(settings.root / "settings.ini", "a") as f:
        f.write(MONITORING)
    parts = [answers("1", 0, 25, 2), answers("1", 1, 25, 3), answers("2", 0, 25, 1), answers("2", 1, 30, 15),
             answers("2", 2, 5, 0),
             answers("1", 1, 1, 0, "-fb", role="fallback", fallback_reason="timeout", failed_version="2"),
             answers("2", 1, 1, 2, "-failed", role="fallback", fallback_reason="error", failed_version="2")]
    shadow = [{**r, "role": "shadow", "model_version": "1", "inputs": [],  # another answer than v2's on each row
               "labels": [CLASSES[(CLASSES.index(label) + 2) % 3] for label in r["labels"]]} for r in parts[3][0]]
    records = sorted([r for part, _ in parts for r in part] + shadow, key=lambda r: r["time"])
    log, labels = write(settings.root / "predictions.jsonl", records), [x for _, part in parts for x in part]
    unlabelled, _ = answers("1", 0, 10, 0)  # answered, never labelled: rows but not labelled rows
    with open(log, "ab") as f:
        f.write(b"".join(orjson.dumps({**r, "request_id": r["request_id"] + "-later"}) + b"\n" for r in unlabelled))
    in_project(settings.root, monkeypatch)
    return settings.root, log, labels


def in_project(root, monkeypatch):
    """Run `mlops-nb` in-process in the project at `root`, with no settings from the environment."""
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLOPS_NB_ROOT", str(root))
    for name in [n for n in os.environ if n.startswith("MLOPS_NB_")]:
        monkeypatch.delenv(name)


def test_degraded_version_and_window_exit_1_fine_exit_0_too_few_labels_never_degraded(project, tmp_path, capsys):
    root, log, labels = project
    monitor = [str(BIN / "mlops-nb"), "monitor", "--log", log, "--labels"]
    found = subprocess.run([*monitor, write(tmp_path / "labels.jsonl", labels)], cwd=root, timeout=300,
                           env=project_env(root, PYTHONPATH=str(REPO)), capture_output=True, text=True)
    assert found.returncode == 1, found.stderr
    assert found.stdout.startswith(f"DEGRADED: v2: degraded, accuracy 0.7500 in window {window(1)} against the "
                                   "registered 0.9600: drop 0.2100 > max_accuracy_drop 0.05, 60 labelled rows\n")
    assert "v1: ok, accuracy 0.9423 in window" in found.stdout, found.stdout  # 49 of 52 rows: the fallback counts

    verdict = json.loads((root / "products/evidence/monitor-accuracy.json").read_text())
    assert verdict["status"] == "degraded" and verdict["thresholds"]["metric"] == "accuracy"
    by_version = {v["model_version"]: v for v in verdict["versions"]}
    assert {k: v["status"] for k, v in by_version.items()} == {"1": "ok", "2": "degraded"}
    assert [(w["start"], w["rows"], w["labelled"], w["verdict"]) for w in by_version["2"]["windows"]] == [
        (window(0)[:17], 50, 50, "ok"), (window(1)[:17], 60, 60, "degraded"), (window(2)[:17], 10, 10,
                                                                               "too few labels")]
    assert [(w["rows"], w["labelled"], w["score"]) for w in by_version["1"]["windows"]] == [
        (70, 50, 0.96), (52, 52, 49 / 52)]  # 10 unlabelled requests in hour 0; the fallback answer in hour 1
    assert verdict["joined"]["skipped_records"] == {"shadow": 30, "failed, unanswered": 1}

    fine = [x for x in labels if not x["request_id"].startswith("v2-h1-")] + answers("2", 1, 30, 0)[1]
    assert main(["monitor", "--log", log, "--labels", write(tmp_path / "fine.jsonl", fine)]) == 0
    assert capsys.readouterr().out.startswith("OK: v1: ok, ")

    few = [x for x in labels if int(x["request_id"].split("-")[2]) < 15]  # all v2's wrong rows, 30 rows a window
    assert main(["monitor", "--log", log, "--labels", write(tmp_path / "few.jsonl", few), "--json"]) == 2
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["status"] == "cannot judge" and {v["status"] for v in verdict["versions"]} == {"too few labels"}
    assert {w["verdict"] for v in verdict["versions"] for w in v["windows"]} == {"too few labels"}
    assert verdict["reasons"][0].startswith("v1: too few labels, no window has 40 labelled rows")


@pytest.mark.parametrize("name, text, message", [
    ("labels.csv", "id,label\na,x\n", "record 1 lacks request_id or label (it has ['id', 'label'])"),
    ("labels.jsonl", '{"request_id": "a", "label": "x"}\n{"request_id": "b", "label": \n', "line 2 is not JSON"),
    ("labels.csv", "request_id,row,label\na,first,x\n", "record 1: row 'first' is not a row number"),
    ("labels.csv", "request_id,label\na,\n", "record 1 has an empty request_id or label"),
    ("labels.csv", "request_id,label\n", "no labels"),
    ("missing.csv", None, "No such file or directory"),
])
def test_bad_labels_file_is_a_clear_error_exit_2(tmp_path, monkeypatch, capsys, name, text, message):
    (tmp_path / "settings.ini").write_text(MONITORING)
    log = write(tmp_path / "predictions.jsonl", answers("1", 0, 1, 0)[0])
    in_project(tmp_path, monkeypatch)
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    assert main(["monitor", "--log", log, "--labels", str(path)]) == 2
    shown = capsys.readouterr()
    assert shown.err.startswith("mlops-nb monitor: ") and message in shown.err and not shown.out


def test_metrics_match_the_gates_metric_function_and_roc_auc_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    truth, answer = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    answer[:300] = truth[:300]
    pairs = {}
    for t, a in zip(truth.tolist(), answer.tolist()):
        pairs[t, a] = pairs.get((t, a), 0) + 1
    expected = classification_metrics(truth, np.eye(4)[answer])
    for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert confusion_score(pairs, metric) == pytest.approx(expected[metric], abs=1e-12)
    with pytest.raises(ValueError, match="roc_auc needs each row's probabilities"):
        confusion_score(pairs, "roc_auc")


def test_label_index_keeps_the_last_of_a_repeated_label(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("request_id,row,label\nb,1,y\na,,x\nb,1,z\n")
    index = LabelIndex(path)
    assert (len(index), index.duplicates) == (2, 1)
    codes = index.lookup([b"a\x1f0", b"b\x1f1", b"c\x1f0"]).tolist()
    assert codes == [index.code("x"), index.code("z"), -1]
