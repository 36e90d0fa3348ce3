"""The notebooks as files: clean, with the metadata the kernel reports, and parameters that say where their
values come from; `mlops-nb lint` and the build report a parameter that a build would silently override."""

import subprocess

import nbformat
import pytest
from conftest import BIN, REPO, copy_project, project_env
from ipykernel.ipkernel import IPythonKernel
from jupyter_client.kernelspec import KernelSpecManager

from mlops_nb.cli import main
from mlops_nb.lint import parameters_cell
from mlops_nb.notebook_clean import KERNELSPEC, clean_file, language_info
from mlops_nb.pipeline import dag_for, param_source
from mlops_nb.settings import load_settings

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_clean_with_the_metadata_the_kernel_reports(path):
    assert not clean_file(path, check=True), f"run `mlops-nb clean` ({path.name} would change on save)"
    metadata = nbformat.read(path, as_version=4).metadata
    spec = KernelSpecManager().get_kernel_spec(KERNELSPEC["name"])
    assert metadata.kernelspec == {"display_name": spec.display_name, "language": spec.language,
                                   "name": KERNELSPEC["name"]}
    assert metadata.language_info == language_info() == IPythonKernel.language_info


def test_every_parameter_says_where_a_build_takes_its_value_from():
    dag = dag_for(load_settings(REPO, environ={}))
    for task in dag.values():
        if str(task.source.loc).endswith(".ipynb"):
            cell = parameters_cell(task.source.loc)
            assert "edit settings.ini" in cell
            for name in set(task.params) - {"upstream", "product"}:
                assert f"{name} = " in cell and param_source(name) in cell.split(f"{name} = ", 1)[1].split("\n")[0]


def test_the_project_passes_its_own_lint(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert main(["lint"]) == 0, capsys.readouterr().out


def test_a_parameter_a_build_would_override_is_reported_by_lint_and_by_the_build(tmp_path):
    root = copy_project(tmp_path / "project", commit=False)
    path = root / "notebooks/03_train.ipynb"
    notebook = nbformat.read(path, as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = cell.source.replace("training = None", "training = {'epochs': 20}")
    nbformat.write(notebook, path)
    expected = ("notebooks/03_train.ipynb:cell 2: NB901 [error] parameters cell sets training = {'epochs': 20}, but a "
                "build injects {'seed': 42, 'epochs': 40, ")
    lint = subprocess.run([str(BIN / "mlops-nb"), "lint"], cwd=root, env=project_env(root), capture_output=True,
                          text=True)
    assert lint.returncode == 1 and expected in lint.stdout, lint.stdout + lint.stderr
    dag = subprocess.run([str(BIN / "python"), "-c", "from mlops_nb.pipeline import make_dag; make_dag()"],
                         cwd=root, env=project_env(root), capture_output=True, text=True, check=True)
    assert expected in dag.stderr and "from the [training] section of settings.ini" in dag.stderr
