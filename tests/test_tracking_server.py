"""Builds against a real `mlflow server` (sqlite database, artifacts proxied by the server): one build, then two at
once from two project copies; no run, version or alias is lost or mixed, and the promotion ledger's chain holds."""

import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import BIN, TEST_EPOCHS, copy_project, project_env, run_build, running

from mlops_nb.products import read_json
from mlops_nb.serving.bento import free_port

pytestmark = pytest.mark.engines


@contextmanager
def mlflow_server(folder: Path, timeout_s: float = 120):
    """`mlflow server` on a free loopback port, its store in `folder`; yields its URL; stopped at the end."""
    port = free_port()
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
               "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "2"]
    url = f"http://127.0.0.1:{port}"
    with running(command, cwd=folder, env=project_env(folder), log=folder / "server.log", ready=f"{url}/health",
                 timeout_s=timeout_s):
        yield url


def cli(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mlops-nb"), *args], cwd=root, env=project_env(root, **env), capture_output=True,
                          text=True, timeout=300)


def test_builds_share_a_tracking_server_without_mixing_runs_versions_or_aliases(tmp_path):
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    with mlflow_server(server_dir) as url:
        remote = {"MLOPS_NB_TRACKING_URI": url}
        first = copy_project(tmp_path / "first")
        run_build(first, **remote)
        assert read_json(first / "products/register/registration.json")["version"] == "1"

        copies = {seed: copy_project(tmp_path / f"seed{seed}") for seed in (7, 8)}
        builds = {seed: subprocess.Popen([str(BIN / "ploomber"), "build"], cwd=root, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True,
                                         env=project_env(root, MLOPS_NB_TRAINING_EPOCHS=str(TEST_EPOCHS),
                                                         MLOPS_NB_TRAINING_SEED=str(seed), **remote))
                  for seed, root in copies.items()}
        for seed, build in builds.items():
            output, _ = build.communicate(timeout=1200)
            assert build.returncode == 0, f"seed {seed}:\n{output[-4000:]}"

        registrations = {seed: read_json(root / "products/register/registration.json") for seed, root in copies.items()}
        assert sorted(r["version"] for r in registrations.values()) == ["2", "3"]
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=url)
        for seed, registration in registrations.items():
            version = client.get_model_version(registration["model_name"], registration["version"])
            assert version.run_id == registration["run_id"] == registration["card"]["run_id"]
            run = client.get_run(registration["run_id"])
            assert run.data.params["seed"] == str(seed) and "test_accuracy" in run.data.metrics
            assert version.tags["mlops_nb.onnx_sha256"] == registration["card"]["onnx_sha256"]
        assert len({r["run_id"] for r in registrations.values()}) == 2

        verified = cli(first, "history", "--verify", **remote)
        assert verified.returncode == 0 and "every link holds" in verified.stdout, verified.stdout + verified.stderr
        status = cli(first, "status", **remote)
        champion = client.get_model_version_by_alias("digits-classifier", "champion").version
        assert f"champion    v{champion} " in status.stdout, status.stdout
        lines = [line for line in verified.stdout.splitlines() if " champion " in line]
        assert lines[-1].split("-> ")[1].startswith(f"{champion}:"), lines  # the ledger's last word is the alias

    for root in (first, *copies.values()):  # nothing went to a local store
        assert not (root / "mlruns.db").exists() and not (root / "mlartifacts").exists()
    assert len(list((server_dir / "artifacts").rglob("model.onnx"))) >= 3
