"""Hand runs (JupyterLab, nbval) read the build's products and write to the scratch area, never to the build."""

import os
import sqlite3

import mlflow
import nbformat
import pytest
from conftest import project_env, tree_digest
from nbclient import NotebookClient

from mlops_nb.products import read_json
from mlops_nb.registry import champion
from mlops_nb.scratch import open_scratch
from mlops_nb.settings import load_settings
from mlops_nb.tracking import connect


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project whose build store holds one run with one artifact."""
    (tmp_path / "settings.ini").write_text("")
    for key in ("TRACKING_URI", "TRACKING_ARTIFACT_ROOT", "PATHS_SCRATCH", "PATHS_PRODUCTS",
                "MONITORING_PREDICTION_LOG"):
        monkeypatch.delenv(f"MLOPS_NB_{key}", raising=False)
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    settings = load_settings(tmp_path, environ={})
    connect(settings)
    with mlflow.start_run() as run:
        mlflow.log_text("from the build", "note.txt")
    return settings, run.info.run_id


def test_the_scratch_store_is_a_copy_whose_artifacts_live_in_the_scratch(project):
    settings, run_id = project
    scratch = open_scratch(settings)
    copy = load_settings(settings.root)  # what the rest of the hand run sees
    assert copy.tracking_uri == f"sqlite:///{scratch.tracking_db}"
    client = connect(copy)
    assert client.get_run(run_id).info.artifact_uri.startswith(scratch.artifacts.as_uri())
    with mlflow.start_run(run_id=run_id):
        mlflow.log_text("from a hand run", "note.txt")
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/note.txt") == "from a hand run"
    assert (settings.path("mlartifacts") / "digits" / run_id / "artifacts/note.txt").read_text() == "from the build"
    with sqlite3.connect(settings.root / "mlruns.db") as build:
        assert build.execute("SELECT artifact_uri FROM runs").fetchone()[0].startswith(
            settings.path("mlartifacts").as_uri())


def test_a_new_build_resets_the_scratch_area_and_a_rerun_keeps_it(project, monkeypatch):
    settings, _ = project
    scratch = open_scratch(settings)
    (scratch.products / "mine.json").parent.mkdir(parents=True)
    (scratch.products / "mine.json").write_text("{}")
    monkeypatch.setattr("os.environ", {**os.environ})  # the same process opening it again
    assert open_scratch(settings) == scratch and (scratch.products / "mine.json").exists()
    connect(settings)  # the build's store changes: a new run
    with mlflow.start_run():
        pass
    open_scratch(settings)
    assert not (scratch.products / "mine.json").exists()


def run_by_hand(root, name, env):
    """Execute notebooks/NAME top to bottom as JupyterLab's Run All would (a kernel in notebooks/)."""
    notebook = nbformat.read(root / "notebooks" / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(root / "notebooks")}}).execute(env=env)
    return notebook


def test_hand_runs_of_train_and_register_leave_the_build_untouched(built_project):
    root = built_project
    build = [root / "products", root / "mlruns.db", root / "mlartifacts", root / ".bentoml"]
    before = tree_digest(*build)
    settings = load_settings(root, environ={})
    champion_before = champion(settings.registry.model_name, settings).version

    train = run_by_hand(root, "03_train.ipynb", project_env(root))
    register = run_by_hand(root, "06_register.ipynb", project_env(root))

    assert tree_digest(*build) == before
    assert champion(settings.registry.model_name, settings).version == champion_before
    assert "Hand run of task 'train'" in str(train.cells) and "writes to scratch/" in str(train.cells)
    registration = read_json(root / "scratch/products/register/registration.json")
    assert registration["run_id"] == read_json(root / "scratch/products/train/run.json")["run_id"]
    assert f"registered {settings.registry.model_name} version {registration['version']}" in str(register.cells)
    assert int(registration["version"]) > int(champion_before)
