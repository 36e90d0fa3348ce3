"""Shared fixtures: a copy of the project built once per session with small parameters, and free ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_nb.pipeline import TELEMETRY_OFF

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("notebooks", "mlops_nb", "pipeline.yaml", "settings.ini", "bentofile.yaml", "pyproject.toml")
BIN = Path(sys.executable).parent
FAST_EPOCHS = 12  # enough for the digits MLP to pass the 0.95 gate, in a few seconds


def project_env(root: Path, **overrides: str) -> dict[str, str]:
    """Environment for a subprocess working on the project copy at `root`: its own stores, only `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_NB_")}
    return {**env, **TELEMETRY_OFF, "BENTOML_HOME": str(root / ".bentoml"), "PATH": f"{BIN}:{env['PATH']}",
            **overrides}


def copy_project(dest: Path, *, commit: bool = True) -> Path:
    """Copy the project's sources to `dest` (optionally as a fresh git repository with one commit)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        else:
            shutil.copy2(src, dest / name)
    (dest / ".gitignore").write_text("products/\nmlruns.db\nmlartifacts/\n.bentoml/\nlogs/\n__pycache__/\n")
    if commit:
        git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
        for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "snapshot of the project"]):
            subprocess.run([*git, *args], cwd=dest, check=True)
    return dest


def run_build(root: Path, *args: str, check: bool = True, **overrides: str) -> subprocess.CompletedProcess:
    """`ploomber build -e mlops_nb.pipeline.make_dag ARGS` in the project copy at `root`."""
    result = subprocess.run([str(BIN / "ploomber"), "build", "-e", "mlops_nb.pipeline.make_dag", *args],
                            cwd=root, env=project_env(root, **overrides), capture_output=True, text=True,
                            timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"build failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def ran_tasks(result: subprocess.CompletedProcess) -> set[str]:
    """Names of the tasks that ploomber's build report marks as run."""
    rows = [line.split() for line in result.stdout.splitlines()]
    return {row[0] for row in rows if len(row) >= 2 and row[1] == "True"}


@pytest.fixture(scope="session")
def built_project(tmp_path_factory) -> Path:
    """A git-committed copy of the project, built end to end once with FAST_EPOCHS."""
    root = copy_project(tmp_path_factory.mktemp("project"))
    run_build(root, "--epochs", str(FAST_EPOCHS))
    return root
