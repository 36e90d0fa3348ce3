"""The framework joins: plain ploomber commands, a hyperparameter in one line, code hashes per task, stale exports."""

import re
import subprocess

import mlflow
import nbformat
import pytest
from conftest import BIN, TEST_EPOCHS, copy_project, git_status, project_env, ran_tasks, run_build

from mlops_nb.products import read_json


def run(root, *command, check=True):
    """A command from the venv's bin folder, in the project copy at `root`, with the session build's settings."""
    result = subprocess.run([str(BIN / command[0]), *command[1:]], cwd=root, capture_output=True, text=True,
                            env=project_env(root, MLOPS_NB_TRAINING_EPOCHS=str(TEST_EPOCHS)), timeout=900)
    assert not check or result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_plain_ploomber_commands_work_on_the_project(built_project):
    status = run(built_project, "ploomber", "status").stdout
    assert all(name in status for name in ("snapshot", "train", "register", "bento", "record"))
    run(built_project, "ploomber", "plot")
    assert all(name in (built_project / "pipeline.html").read_text() for name in ("snapshot", "record"))
    before = (built_project / "products/record.json").stat().st_mtime_ns
    run(built_project, "ploomber", "task", "record", "--force")  # the last task: nothing downstream goes stale
    assert (built_project / "products/record.json").stat().st_mtime_ns > before
    run(built_project, "ploomber", "nb", "--inject")
    injected = nbformat.read(built_project / "notebooks/03_train.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in injected.cells)
    run(built_project, "ploomber", "nb", "--remove")  # README's undo: these two commands
    run(built_project, "mlops-nb", "clean")
    assert git_status(built_project) == ""


def test_a_stale_export_stops_the_build_before_any_task(tmp_path):
    root = copy_project(tmp_path / "project", commit=False)
    path = root / "notebooks/03_train.ipynb"
    notebook = nbformat.read(path, as_version=4)
    cell = next(c for c in notebook.cells if c.source.startswith("#| export\ndef seed_everything"))
    cell.source = cell.source.replace("    random.seed(seed)\n", "    random.seed(seed)  # edited, not exported\n")
    nbformat.write(notebook, path)
    build = run(root, "ploomber", "build", check=False)
    assert build.returncode != 0
    expected = "mlops_nb/research/model.py is stale: notebooks/03_train.ipynb exports something else"
    assert expected in build.stderr and "run `nbdev-export`" in build.stderr, build.stderr[-2000:]
    assert not (root / "products").exists()
    check = run(root, "mlops-nb", "check-export", check=False)
    assert check.returncode == 1 and expected in check.stdout
    run(root, "nbdev-export")
    assert run(root, "mlops-nb", "check-export").returncode == 0


def _add_label_smoothing(root):
    """A new hyperparameter, as a data scientist adds one: settings.ini, settings.py, its use in train_model."""
    settings_ini = root / "settings.ini"
    settings_ini.write_text(settings_ini.read_text().replace("torch_threads = 1\n",
                                                             "torch_threads = 1\nlabel_smoothing = 0.1\n"))
    assert "label_smoothing = 0.1" in settings_ini.read_text()
    settings_py = root / "mlops_nb/settings.py"
    settings_py.write_text(settings_py.read_text().replace(
        "    torch_threads: int = Field(1, ge=1)\n",
        "    torch_threads: int = Field(1, ge=1)\n    label_smoothing: float = Field(0.0, ge=0, lt=1)\n"))
    path = root / "notebooks/03_train.ipynb"
    notebook = nbformat.read(path, as_version=4)
    cell = next(c for c in notebook.cells if "def train_model(" in c.source)
    cell.source = cell.source.replace("torch_threads=1, on_epoch=None,", "torch_threads=1, label_smoothing=0.0, "
                                      "on_epoch=None,")
    cell.source = cell.source.replace("nn.CrossEntropyLoss()", "nn.CrossEntropyLoss(label_smoothing=label_smoothing)")
    nbformat.write(notebook, path)
    run(root, "nbdev-export")
    return settings_ini


@pytest.mark.engines  # four builds of a fresh copy: tier 1 keeps to one built project per session (DECISIONS 19)
def test_a_new_hyperparameter_is_one_setting_one_field_and_its_use(tmp_path):
    root = copy_project(tmp_path / "project", commit=False)
    settings_ini = _add_label_smoothing(root)
    epochs = {"MLOPS_NB_TRAINING_EPOCHS": "3"}
    run_build(root, **epochs)
    tracking = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns.db'}")  # this process's settings.py lacks the field
    run_id = read_json(root / "products/train/run.json")["run_id"]
    assert tracking.get_run(run_id).data.params["label_smoothing"] == "0.1"
    executed = nbformat.read(root / "products/03_train.ipynb", as_version=4)
    injected = next(c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert re.search(r"[\"']label_smoothing[\"']: 0\.1\b", injected.source)

    settings_ini.write_text(settings_ini.read_text().replace("label_smoothing = 0.1", "label_smoothing = 0.2"))
    assert ran_tasks(run_build(root, **epochs)) == {"train", "evaluate", "export", "register", "bento", "record"}
    run_id = read_json(root / "products/train/run.json")["run_id"]
    assert tracking.get_run(run_id).data.params["label_smoothing"] == "0.2"

    # code hashes follow imports: a module no notebook imports re-runs nothing, the registry re-runs its users
    cli = root / "mlops_nb/cli.py"
    cli.write_text(cli.read_text().replace('"""`mlops-nb`:', '"""`mlops-nb` (edited):', 1))
    assert ran_tasks(run_build(root, **epochs)) == set()
    registry = root / "mlops_nb/registry.py"
    registry.write_text(registry.read_text() + "\n# edited\n")
    assert ran_tasks(run_build(root, **epochs)) == {"register", "bento", "record"}
