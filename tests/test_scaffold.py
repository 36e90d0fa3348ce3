"""`mlops-nb new` without a build: what the new project holds, and the clear errors for data it cannot use."""

import re

import nbformat
import pandas as pd
import pytest
from sklearn.datasets import load_iris

from mlops_nb.cli import main
from mlops_nb.export_check import stale_exports
from mlops_nb.notebook_lint import at_or_above, lint_paths
from mlops_nb.scaffold import ScaffoldError, new_project
from mlops_nb.settings import load_settings


@pytest.fixture
def iris_csv(tmp_path):
    frame = load_iris(as_frame=True).frame
    frame["species"] = frame.pop("target").map(dict(enumerate(load_iris().target_names)))
    frame.to_csv(tmp_path / "iris.csv", index=False)
    return tmp_path / "iris.csv"


def test_a_new_project_is_configured_for_its_data_and_exports_to_its_own_package(tmp_path, iris_csv, capsys):
    assert main(["new", str(tmp_path / "Iris Project"), "--data", str(iris_csv), "--target", "species"]) == 0
    root = tmp_path / "Iris Project"
    assert "ploomber build" in capsys.readouterr().out
    settings = load_settings(root, environ={})
    assert (settings.data.source, settings.data.target) == ("data/iris.csv", "species")
    assert settings.registry.model_name == "iris-project-classifier"
    assert settings.serving.service_name == "iris_project_service" and settings.tracking.experiment == "iris_project"
    assert settings.gates.min_score == 0.34  # just above the most common class's share (1/3)
    assert pd.read_csv(root / "data/iris.csv").equals(pd.read_csv(iris_csv))
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        text = path.read_text()
        assert "mlops_nb.research" not in text and "default_exp research." not in text, path.name
        assert all(not c.get("outputs") for c in nbformat.read(path, as_version=4).cells)
    assert sorted(p.name for p in (root / "iris_project_research").glob("*.py")) == [
        "__init__.py", "_modidx.py", "data.py", "evaluate.py", "export.py", "model.py", "validate.py"]
    assert "from iris_project_research.data import" in (root / "notebooks/03_train.ipynb").read_text()
    assert stale_exports(root) == []
    assert at_or_above(lint_paths(sorted((root / "notebooks").glob("*.ipynb"))), "warning") == []


@pytest.mark.parametrize("case, message", [
    ("exists", "exists and is not empty"),
    ("target", "has no target column 'label' (--target)"),
    ("one class", "column 'species' needs at least 2 classes"),
    ("format", "expected a .csv or .parquet file"),
])
def test_data_it_cannot_use_gets_a_clear_error(tmp_path, iris_csv, case, message):
    dest, data, target = tmp_path / "new", iris_csv, "species"
    if case == "exists":
        dest.mkdir()
        (dest / "notes.txt").write_text("mine")
    elif case == "target":
        target = "label"
    elif case == "one class":
        pd.read_csv(iris_csv).assign(species="setosa").to_csv(data, index=False)
    else:
        data = iris_csv.rename(iris_csv.with_suffix(".txt"))
    with pytest.raises(ScaffoldError, match=re.escape(message)):
        new_project(dest, data, target)
