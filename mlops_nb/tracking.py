"""Thin adapter around MLflow tracking: experiment set-up, run provenance, and logging executed notebooks."""

from __future__ import annotations

import json
import logging
import os
import platform
import sqlite3
import subprocess
from contextlib import closing
from importlib import metadata
from itertools import product
from pathlib import Path

from mlops_nb.settings import Settings, load_settings

__all__ = ["connect", "git", "start_training_run", "resume_run", "log_notebooks", "provenance", "build_settings",
           "copy_sqlite", "relocate_artifacts", "KEY_PACKAGES", "BUILD_SECTIONS", "BUILD_SETTINGS_TAG"]

KEY_PACKAGES = ("mlops-nb", "torch", "numpy", "pandas", "scikit-learn", "onnx", "onnxscript", "onnxruntime",
                "onnxruntime-gpu", "mlflow", "bentoml", "ploomber", "papermill")
# the settings sections a model's files and metrics depend on; a training run records them (`mlops-nb reproduce`)
BUILD_SECTIONS = ("data", "validation", "training", "export")
BUILD_SETTINGS_TAG = "mlops_nb.build_settings"
# tables and columns of an MLflow sqlite store that hold artifact locations
ARTIFACT_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("logged_models", "artifact_location"), ("model_versions", "storage_location"))


def connect(settings: Settings | None = None):
    """Point MLflow at the project's tracking store and experiment; return an `MlflowClient`."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    settings = settings or load_settings()
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = mlflow.MlflowClient()
    name = settings.tracking.experiment
    if client.get_experiment_by_name(name) is None:
        location = None if settings.tracking.remote else (settings.path(settings.tracking.artifact_root) /
                                                          name).as_uri()
        try:
            client.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException as error:  # another build created it first
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    mlflow.set_experiment(name)
    return client


def git(root: Path, *args: str) -> str | None:
    """`git ARGS` in `root`: its output, or None outside a checkout (or without git)."""
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(root: Path) -> dict[str, str]:
    """Git commit and dirtiness of the project, Python and key package versions, as MLflow tags."""
    commit = git(root, "rev-parse", "HEAD")
    status = git(root, "status", "--porcelain") if commit else None
    tags = {
        "mlops_nb.git_commit": commit or "unknown (not a git checkout)",
        "mlops_nb.git_dirty": "unknown" if status is None else str(bool(status)).lower(),
        "mlops_nb.python": platform.python_version(),
        "mlops_nb.platform": platform.platform(),
    }
    for package in KEY_PACKAGES:
        try:
            tags[f"mlops_nb.version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            tags[f"mlops_nb.version.{package}"] = "not installed"
    return tags


def build_settings(settings: Settings, training: dict | None = None) -> dict[str, dict]:
    """The effective `BUILD_SECTIONS` (settings.ini plus environment overrides), as JSON-ready values; with
    `training` (what one run trains: a search candidate), that as [training] and an empty [search], so that a
    rebuild from them (`mlops-nb reproduce`) trains that candidate alone."""
    recorded = {section: settings[section].model_dump(mode="json") for section in BUILD_SECTIONS}
    if training is not None:
        recorded["training"] = json.loads(json.dumps(dict(training)))
        recorded["search"] = {key: [] for key in settings.search.keys()}
    return recorded


def start_training_run(*, params: dict, data_hash: str, settings: Settings | None = None, name: str = "train",
                       parent_run_id: str | None = None, training: dict | None = None) -> str:
    """Open the run that will hold one trained model (or a search over several: `name` "search", each candidate's
    run with its `parent_run_id` and its `training` configuration): params (as they are), data hash, provenance and
    the effective build settings; returns its id."""
    import mlflow

    settings = settings or load_settings()
    connect(settings)
    tags = {**provenance(settings.root), "mlops_nb.data_sha256": data_hash,
            BUILD_SETTINGS_TAG: json.dumps(build_settings(settings, training), sort_keys=True)}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id  # what mlflow.start_run(nested=True) sets: the UI groups them
    with mlflow.start_run(tags=tags) as run:
        # task name plus short run id: distinct in MLflow's UI, unlike the generated names (seeded `random`)
        mlflow.set_tag("mlflow.runName", f"{name}-{run.info.run_id[:8]}")
        mlflow.log_params({**params, "data_sha256": data_hash})
        return run.info.run_id


def resume_run(run_id: str, settings: Settings | None = None):
    """Re-open an existing run (a later task logging into the training run); use as a context manager."""
    import mlflow

    connect(settings)
    return mlflow.start_run(run_id=run_id)


def log_notebooks(run_id: str, paths, settings: Settings | None = None) -> None:
    """Attach executed notebooks to the run under `notebooks/`."""
    client = connect(settings)
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path="notebooks")


def copy_sqlite(db: Path, copy: Path) -> None:
    """A consistent copy of a live sqlite database through sqlite's online backup API (never a raw file copy)."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as source, closing(sqlite3.connect(copy)) as target:
        source.backup(target)


def relocate_artifacts(db: Path, old: Path, new: Path) -> None:
    """Point the artifact locations of the MLflow sqlite store `db` that lie in folder `old` (as file URIs or plain
    paths) at the same places in folder `new`."""
    with closing(sqlite3.connect(db)) as store, store:
        tables = {row[0] for row in store.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for (table, column), (before, after) in product(ARTIFACT_COLUMNS, ((old.as_uri(), new.as_uri()),
                                                                            (str(old), str(new)))):
            if table in tables:  # names from the constant ARTIFACT_COLUMNS, values bound: no injection
                update = (f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE {column} = ? "  # nosec B608
                          f"OR substr({column}, 1, ?) = ?")
                store.execute(update, (after, len(before) + 1, before, len(before) + 1, before + "/"))
