"""Lifecycle: a rollback then `mlops-nb deploy` serves the previous champion; artifacts are byte-identical from any
folder; a build killed mid-task leaves nothing trusted."""

import json
import os
import signal
import subprocess
import time

import httpx
import pytest
from conftest import BIN, FAST_EPOCHS, copy_project, project_env, ran_tasks, run_build

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


def test_rollback_then_deploy_serves_the_previous_champion(tmp_path):
    root = copy_project(tmp_path / "project")
    run_build(root)
    run_build(root, "--force", "--partially", "register")  # the same weights again: version 2, gates pass
    assert served_version(root, tmp_path / "serve-1.log") == "2"
    assert "champion 2 -> 1" in mlops_nb(root, "rollback", "--reason", "answers changed for a client")
    assert served_version(root, tmp_path / "serve-2.log") == "1"
    history = json.loads(mlops_nb(root, "history", "--verify", "--json"))
    assert history["verified"] is True
    assert [(e["alias"], e["to_version"]) for e in history["entries"]] == [
        ("challenger", "1"), ("champion", "1"), ("challenger", "2"), ("champion", "2"), ("champion", "1")]
    status = json.loads(mlops_nb(root, "status", "--json"))
    assert status["champion"]["model_version"] == "1" and status["challenger"]["model_version"] == "2"


def test_two_clones_in_different_folders_build_byte_identical_artifacts(tmp_path):
    from mlops_nb.products import file_sha256

    hashes = []
    for folder in (tmp_path / "first" / "project", tmp_path / "second" / "elsewhere"):
        copy_project(folder)
        run_build(folder)
        products = folder / "products"
        artifacts = [*sorted((products / "snapshots").glob("*.parquet")), products / "train/model.pt",
                     products / "export/model.onnx", products / "export/model.int8.onnx"]
        hashes.append({str(p.relative_to(products)): file_sha256(p) for p in artifacts})
        assert all(str(folder).encode() not in p.read_bytes() for p in artifacts)  # no build path inside
    assert hashes[0] == hashes[1] and len(hashes[0]) == 4


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
                             env=project_env(root, MLOPS_NB_TRAINING_EPOCHS=str(FAST_EPOCHS)),
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
