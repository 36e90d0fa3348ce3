"""Serving follows the registry: a rollback, then `mlops-nb deploy`, serves the previous champion (no retraining)."""

import json
import subprocess

import httpx
import pytest
from conftest import BIN, copy_project, project_env, run_build

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
