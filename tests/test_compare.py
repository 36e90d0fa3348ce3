"""`mlops-nb compare`: champion and shadow records of a prediction log paired by request id, labels joined later."""

import json
import subprocess

import orjson
from conftest import BIN, copy_project, project_env

from mlops_nb.compare import compare_shadow, read_labels


def record(request_id, role, version, labels):
    return {"schema_version": 1, "request_id": request_id, "time": 0.0, "model_name": "m", "model_version": version,
            "role": role, "subject": None, "inputs": [], "labels": labels, "confidence": [0.9] * len(labels),
            "latency_ms": 1.0}


def write_log(path, records):
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def test_agreement_and_accuracy_from_paired_records(tmp_path):
    log = write_log(tmp_path / "predictions.jsonl", [
        record("a", "champion", "1", [3, 4]), record("b", "champion", "1", [5]),  # b was not shadowed
        record("a", "shadow", "2", [3, 7]), record("c", "champion", "1", [1]), record("c", "shadow", "2", [1]),
        record("z", "shadow", "2", [0]),  # its champion record is not in this log
    ])
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,row,label\na,0,3\na,1,7\nb,0,5\nunknown,0,1\n")
    result = compare_shadow(log, read_labels(labels))
    assert (result.requests, result.rows, result.agreeing_rows, result.unpaired) == (2, 3, 2, 1)
    assert result.champion_versions == {"1": 2} and result.challenger_versions == {"2": 2}
    assert (result.labelled_rows, result.champion_accuracy, result.challenger_accuracy) == (2, 0.5, 1.0)


def test_labels_as_json_lines_with_string_labels_and_a_clear_error_for_a_bad_file(tmp_path):
    lines = tmp_path / "labels.jsonl"
    lines.write_text('{"request_id": "a", "label": "cat"}\n\n{"request_id": "b", "row": 2, "label": "dog"}\n')
    assert read_labels(lines) == {("a", 0): "cat", ("b", 2): "dog"}
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\nx,1\n")
    try:
        read_labels(bad)
    except ValueError as error:
        assert "lacks request_id" in str(error)
    else:
        raise AssertionError("a labels file without request_id was accepted")


def test_cli_reports_agreement_and_exits_1_without_shadow_records(tmp_path):
    root = copy_project(tmp_path / "project", commit=False)
    log = write_log(tmp_path / "p.jsonl", [record("a", "champion", "1", [2]), record("a", "shadow", "3", [2])])

    def compare(*args):
        return subprocess.run([str(BIN / "mlops-nb"), "compare", *args], cwd=root, env=project_env(root),
                              capture_output=True, text=True, timeout=120)

    shown = compare("--log", str(log))
    assert shown.returncode == 0 and "agreement   1.0000" in shown.stdout and "pass --labels" in shown.stdout
    assert json.loads(compare("--log", str(log), "--json").stdout)["agreement"] == 1.0
    empty = compare("--log", str(write_log(tmp_path / "q.jsonl", [record("a", "champion", "1", [2])])))
    assert empty.returncode == 1 and "shadow_fraction" in empty.stderr
    assert compare("--log", str(tmp_path / "missing.jsonl")).returncode == 2
