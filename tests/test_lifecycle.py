"""Lifecycle: a rollback then `mlops-nb deploy` serves the previous champion; artifacts are byte-identical from any
folder; a build killed mid-task leaves nothing trusted."""

import json
import os
import signal
import subprocess
import time

import httpx
import pytest
from conftest import BIN, TEST_EPOCHS, copy_project, project_env, ran_tasks, run_build

from mlops_nb.products import read_json
from mlops_nb.research.model import load_model, weights_sha256
from mlops_nb.serving.bento import served

pytestmark = pytest.mark.engines


def mlops_nb(root, *args):
    result = subprocess.run([str(BIN / "mlops-nb"), *args], cwd=root, env=project_env(root), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def served_version(root, log):
    """Deploy the champion, serve the project's bento, and ask which registry version answers."""
    assert json.loads(mlops_nb(root, "deploy"))["bento_tag"]
    with served("", cwd=root, env=project_env(root), log=log) as url:
        answer = httpx.post(f"{url}/predict", json={"instances": [[0.0] * 64]}, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()["model_version"]


def test_rollback_then_deploy_serves_the_previous_champion(built_project, tmp_path):
    root = built_project  # the session's build: other tests moved its champion before, as this one does
    run_build(root)
    seen = len(json.loads(mlops_nb(root, "history", "--json"))["entries"])
    run_build(root, "--force", "--partially", "register")  # the same weights again: a new version, gates pass
    status = json.loads(mlops_nb(root, "status", "--json"))
    new, old = status["champion"]["model_version"], status["last_ledger_entry"]["from_version"]
    assert old not in (None, new) and served_version(root, tmp_path / "serve-1.log") == new
    assert f"champion {new} -> {old}" in mlops_nb(root, "rollback", "--reason", "answers changed for a client")
    assert served_version(root, tmp_path / "serve-2.log") == old
    history = json.loads(mlops_nb(root, "history", "--verify", "--json"))
    assert history["verified"] is True
    assert [(e["alias"], e["to_version"]) for e in history["entries"][seen:]] == [
        ("challenger", new), ("champion", new), ("champion", old)]
    status = json.loads(mlops_nb(root, "status", "--json"))
    assert status["champion"]["model_version"] == old and status["challenger"]["model_version"] == new
    assert status["serving"]["model_version"] == old  # the bento `mlops-nb deploy` built after the rollback


def test_two_clones_in_different_folders_build_byte_identical_artifacts_and_reproduce(tmp_path):
    """Two clones build byte-identical artifacts; `mlops-nb reproduce` rebuilds the first clone's version and
    matches, and refuses the second's, trained with an uncommitted file in the tree."""
    from mlops_nb.products import file_sha256

    hashes = []
    first, second = tmp_path / "first" / "project", tmp_path / "second" / "elsewhere"
    for folder in (first, second):
        copy_project(folder)
        if folder == second:
            (folder / "notes.txt").write_text("an uncommitted file: the build's tree is dirty\n")
        run_build(folder)
        products = folder / "products"
        artifacts = [*sorted((products / "snapshots").glob("*.parquet")), products / "train/model.pt",
                     products / "export/model.onnx", *sorted((products / "export/variants").glob("*.onnx"))]
        hashes.append({str(p.relative_to(products)): file_sha256(p) for p in artifacts})
        assert all(str(folder).encode() not in p.read_bytes() for p in artifacts)  # no build path inside
    assert hashes[0] == hashes[1] and len(hashes[0]) == 6  # int8, pruned and distilled too

    reproduced = subprocess.run([str(BIN / "mlops-nb"), "reproduce", "1", "--json"], cwd=first,
                                env=project_env(first), capture_output=True, text=True, timeout=900)
    assert reproduced.returncode == 0, reproduced.stdout + reproduced.stderr
    report = json.loads(reproduced.stdout)
    assert report["reproduced"] is True
    checked = {c["what"] for c in report["checks"]}
    assert {"weights_sha256", "onnx_sha256", "data_sha256", "metric test_accuracy"} <= checked
    assert json.loads((first / "products/evidence/reproduce-v1.json").read_text())["matched"] is True

    refused = subprocess.run([str(BIN / "mlops-nb"), "reproduce", "1", "--json"], cwd=second,
                             env=project_env(second), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert any("uncommitted changes" in reason for reason in json.loads(refused.stdout)["refused"])


def task_code_ran(notebook, before) -> bool:
    """Has papermill's copy of the executed notebook (rewritten after each cell) run its `task_context` cell?"""
    try:
        if notebook.stat().st_mtime_ns == before:
            return False
        cells = json.loads(notebook.read_text())["cells"]
    except (OSError, ValueError):  # not there yet, or caught mid-write
        return False
    return any("task_context(" in "".join(c["source"]) and
               c.get("metadata", {}).get("papermill", {}).get("status") == "completed" for c in cells)


def test_a_build_killed_mid_task_leaves_nothing_the_next_build_trusts(tmp_path):
    root = copy_project(tmp_path / "project")
    run_build(root)
    notebook = root / "products/03_train.ipynb"
    before = notebook.stat().st_mtime_ns
    build = subprocess.Popen([str(BIN / "ploomber"), "task", "train", "--force"], cwd=root,
                             env=project_env(root, MLOPS_NB_TRAINING_EPOCHS=str(TEST_EPOCHS)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not task_code_ran(notebook, before):
        assert build.poll() is None and time.monotonic() < deadline, "train never started"
        time.sleep(0.2)
    time.sleep(1)
    os.killpg(build.pid, signal.SIGKILL)
    build.wait(timeout=60)
    assert "train" in ran_tasks(run_build(root))  # the killed task's products are not taken as up to date
    run = read_json(root / "products/train/run.json")
    model, _ = load_model(root / "products/train/model.pt")
    assert weights_sha256(model) == run["weights_sha256"]


def test_shadow_challenger_scores_every_request_off_the_answer_and_compare_reports_it(tmp_path):
    import numpy as np
    import pandas as pd

    from mlops_nb.monitoring import read_prediction_log
    from mlops_nb.onnx_export import onnx_predict, ort_session

    root = copy_project(tmp_path / "project")
    run_build(root)  # v1: champion
    # v2: other weights (another seed, fewer epochs) that cannot pass the gates: the challenger, not the champion
    run_build(root, "--force", "--partially", "register", MLOPS_NB_TRAINING_SEED="7", MLOPS_NB_TRAINING_EPOCHS="4",
              MLOPS_NB_GATES_MIN_SCORE="1.0")
    shadow_on = {"MLOPS_NB_SERVING_SHADOW_FRACTION": "1"}
    deployed = subprocess.run([str(BIN / "mlops-nb"), "deploy"], cwd=root, env=project_env(root, **shadow_on),
                              capture_output=True, text=True, timeout=600)
    assert deployed.returncode == 0, deployed.stderr
    assert json.loads(deployed.stdout)["model_version"] == "1" and json.loads(deployed.stdout)["shadow_version"] == "2"

    snapshot = pd.read_parquet(read_json(root / "products/snapshot/manifest.json")["path"])
    target = read_json(root / "products/snapshot/manifest.json")["target"]
    features, truth = snapshot.drop(columns=[target]).to_numpy(np.float32)[:200], snapshot[target].to_numpy()[:200]
    log = tmp_path / "predictions.jsonl"
    env = project_env(root, MLOPS_NB_MONITORING_PREDICTION_LOG=str(log), **shadow_on)
    answers = {}
    with served("", cwd=root, env=env, log=tmp_path / "serve.log") as url:
        assert httpx.get(f"{url}/model/metadata").json()["shadow"] == {"model_version": "2", "fraction": 1.0}
        for start in range(0, 200, 5):
            answer = httpx.post(f"{url}/predict", json={"instances": features[start:start + 5].tolist()}, timeout=30)
            assert answer.status_code == 200 and answer.json()["model_version"] == "1", answer.text
            answers[answer.json()["request_id"]] = (start, [p["label"] for p in answer.json()["predictions"]])
    records = read_prediction_log(log)  # the server stopped: the shadow queue and the log were flushed
    shadow = {r["request_id"]: r for r in records if r["role"] == "shadow"}
    assert {r["request_id"] for r in records if r["role"] == "champion"} == set(shadow) == set(answers)
    assert {r["model_version"] for r in shadow.values()} == {"2"}
    challenger_labels = onnx_predict(ort_session(read_json(root / "products/export/export.json")["served_path"]),
                                     features).argmax(axis=1)
    for request_id, (start, _) in answers.items():  # the shadow really is v2's ONNX on the same rows
        assert shadow[request_id]["labels"] == challenger_labels[start:start + 5].tolist()

    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,row,label\n" + "".join(
        f"{rid},{row},{truth[start + row]}\n" for rid, (start, _) in answers.items() for row in range(5)))
    compared = subprocess.run([str(BIN / "mlops-nb"), "compare", "--log", str(log), "--labels", str(labels), "--json"],
                              cwd=root, env=project_env(root), capture_output=True, text=True, timeout=120)
    report = json.loads(compared.stdout)
    champion_correct = sum(label == truth[start + row] for start, got in answers.values()
                           for row, label in enumerate(got))
    agree = sum(got == challenger_labels[start:start + 5].tolist()[row] for start, labels_ in answers.values()
                for row, got in enumerate(labels_))
    assert (report["requests"], report["rows"], report["labelled_rows"]) == (40, 200, 200)
    assert report["champion_accuracy"] == champion_correct / 200 and report["agreeing_rows"] == agree
    assert report["challenger_accuracy"] == float(np.mean(challenger_labels == truth))
