"""`mlops-nb new`: a project on your own tabular classification data, made from this project's notebooks and DAG."""

# The new project gets copies of the research notebooks (outputs cleared), the DAG (pipeline.yaml, dag.yaml),
# bentofile.yaml, the Jupyter configuration, settings.ini pointing at a copy of the data, its own nbdev package
# for the notebooks' `#| export` cells, tests and a README whose commands run as printed.

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd

from mlops_nb.research.data import class_labels, drop_unlabeled, load_source
from mlops_nb.serving.bento import FRAMEWORK_SOURCE

__all__ = ["new_project", "ScaffoldError", "TEMPLATE"]

TEMPLATE = ("notebooks", "pipeline.yaml", "dag.yaml", "bentofile.yaml", ".jupyter", ".gitignore")
TEMPLATE_TESTS = Path(__file__).resolve().parent / "templates"
RESEARCH = "mlops_nb.research"


class ScaffoldError(ValueError):
    """`mlops-nb new` cannot make a project from what it was given; the message says what to change."""


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not slug or slug[0].isdigit():
        raise ScaffoldError(f"cannot make a Python name from the folder name {name!r}: start it with a letter")
    return slug


def _check_data(data: Path, target: str) -> pd.DataFrame:
    """Read the data as the snapshot step will, and refuse what could never train a classifier."""
    try:
        frame = load_source(str(data), target)
    except (FileNotFoundError, ValueError) as error:
        raise ScaffoldError(str(error).replace("[data] target in settings.ini", "--target")) from None
    labeled, _ = drop_unlabeled(frame, target)
    if labeled[target].nunique() < 2:
        raise ScaffoldError(f"{data}: column {target!r} needs at least 2 classes to learn from")
    if len(frame.columns) < 2:
        raise ScaffoldError(f"{data}: no feature columns besides {target!r}")
    return labeled


def _settings(template: str, *, data: str, target: str, slug: str, min_score: float) -> str:
    """The framework's settings.ini, comments kept, with this project's data, names and accuracy floor."""
    values = {("data", "source"): data, ("data", "target"): target, ("tracking", "experiment"): slug,
              ("registry", "model_name"): f"{slug.replace('_', '-')}-classifier",
              ("serving", "service_name"): f"{slug}_service", ("gates", "min_score"): f"{min_score:g}"}
    lines, section = [], None
    for line in template.splitlines():
        if match := re.match(r"^\[(\w+)\]", line):
            section = match.group(1)
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and (section, key) in values:
            line = f"{key} = {values[section, key]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _notebooks(folder: Path, package: str) -> None:
    """Point the notebooks' exports and imports at the project's own package, and clear their outputs."""
    for path in sorted(folder.glob("*.ipynb")):
        notebook = nbformat.read(str(path), as_version=4)
        for cell in notebook.cells:
            cell.source = cell.source.replace(f"#| default_exp {RESEARCH.split('.', 1)[1]}.", "#| default_exp ")
            cell.source = cell.source.replace(RESEARCH, package)
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(notebook, str(path))


def _fill(template: Path, dest: Path, **values: str) -> None:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)


def new_project(dest: Path | str, data: Path | str, target: str) -> Path:
    """Make a project in `dest` (new or empty) that trains, registers and serves a classifier of `target` in `data`."""
    dest, data = Path(dest).resolve(), Path(data).resolve()
    if not (FRAMEWORK_SOURCE / "notebooks").is_dir():
        raise ScaffoldError(f"the notebooks to copy are not in {FRAMEWORK_SOURCE}: install mlops-nb from its source "
                            "checkout (pip install -e, as its README does)")
    if dest.exists() and any(dest.iterdir()):
        raise ScaffoldError(f"{dest} exists and is not empty: choose a new folder")
    frame = _check_data(data, target)
    slug = _slug(dest.name)
    package = f"{slug}_research"
    dest.mkdir(parents=True, exist_ok=True)
    for name in TEMPLATE:
        source = FRAMEWORK_SOURCE / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, dest / name)
    shutil.rmtree(dest / "notebooks" / ".ipynb_checkpoints", ignore_errors=True)
    (dest / "data").mkdir()
    shutil.copy2(data, dest / "data" / data.name)
    majority = float(frame[target].value_counts(normalize=True).max())
    (dest / "settings.ini").write_text(_settings(
        (FRAMEWORK_SOURCE / "settings.ini").read_text(), data=f"data/{data.name}", target=target, slug=slug,
        min_score=min(0.99, round(majority + 0.005, 2))))
    _notebooks(dest / "notebooks", package)
    classes = class_labels(frame[target])
    values = {"slug": slug, "package": package, "bin": str(Path(sys.executable).parent), "data": data.name,
              "target": target, "rows": str(len(frame)), "features": str(frame.shape[1] - 1),
              "classes": ", ".join(map(str, classes)), "majority": f"{majority:.3f}"}
    for template in sorted(TEMPLATE_TESTS.rglob("*.tmpl")):
        _fill(template, dest / template.relative_to(TEMPLATE_TESTS).with_suffix(""), **values)
    (dest / package).mkdir()
    subprocess.run([str(Path(sys.executable).parent / "nbdev-export")], cwd=dest, check=True, capture_output=True)
    return dest
