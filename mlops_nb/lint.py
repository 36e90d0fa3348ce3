"""Checks on the project's notebooks that a build relies on (`mlops-nb lint`, and the build itself)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import nbformat

from mlops_nb.pipeline import param_source

__all__ = ["Finding", "parameters_cell", "overridden_parameters"]

PAPERMILL_TAG = "parameters"


@dataclass(frozen=True)
class Finding:
    """One problem in one notebook, with what to do about it."""

    notebook: Path
    message: str

    def __str__(self) -> str:
        return f"{self.notebook}: {self.message}"


def parameters_cell(path: Path | str) -> str | None:
    """The source of a notebook's papermill `parameters` cell, or None when it has none."""
    notebook = nbformat.read(str(path), as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code" and PAPERMILL_TAG in cell.get("metadata", {}).get("tags", []):
            return cell.source
    return None


def _assigned(source: str) -> dict[str, ast.expr]:
    values = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    values[target.id] = node.value
    return values


def overridden_parameters(dag) -> list[Finding]:
    """Parameters that a notebook sets to a value although a build injects its own (the build's wins, silently)."""
    findings = []
    for task in dag.values():
        path = getattr(task.source, "loc", None)
        if not (path and str(path).endswith(".ipynb")):
            continue
        source = parameters_cell(path)
        if source is None:
            findings.append(Finding(Path(path), f"no cell tagged {PAPERMILL_TAG!r}: the build cannot inject values"))
            continue
        for name, value in _assigned(source).items():
            if name in task.params and name not in ("upstream", "product") and not (
                    isinstance(value, ast.Constant) and value.value is None):
                findings.append(Finding(Path(path), (
                    f"parameters cell sets {name} = {ast.unparse(value)}, but a build injects "
                    f"{task.params[name]!r} from {param_source(name)}: change it there, and set {name} = None "
                    "here")))
    return findings
