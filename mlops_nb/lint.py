"""Checks on the project's notebooks that need its DAG (`mlops-nb lint` adds them to `mlops_nb.notebook_lint`'s)."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat

from mlops_nb.notebook_lint import RULES, Finding
from mlops_nb.pipeline import param_source

__all__ = ["parameters_cell", "overridden_parameters", "unclean_notebooks"]

PAPERMILL_TAG = "parameters"


def _parameters(path: Path | str) -> tuple[int, str] | None:
    notebook = nbformat.read(str(path), as_version=4)
    return next(((i, c.source) for i, c in enumerate(notebook.cells)
                 if c.cell_type == "code" and PAPERMILL_TAG in c.get("metadata", {}).get("tags", [])), None)


def parameters_cell(path: Path | str) -> str | None:
    """The source of a notebook's papermill `parameters` cell, or None when it has none."""
    found = _parameters(path)
    return found[1] if found else None


def _finding(rule: str, notebook: Path, cell: int | None, message: str, evidence: str, fix: str) -> Finding:
    return Finding(rule, RULES[rule][0], str(notebook), cell, message, evidence, fix)


def overridden_parameters(dag, root: Path | None = None) -> list[Finding]:
    """Parameters that a notebook sets to a value although a build injects its own (the build's wins, silently)."""
    findings = []
    for task in dag.values():
        path = getattr(task.source, "loc", None)
        found = _parameters(path) if path and str(path).endswith(".ipynb") else None
        if found is None:
            continue  # a notebook without a parameters cell is notebook_lint's NB101
        index, source = found
        shown = Path(path).relative_to(root) if root and Path(path).is_relative_to(root) else Path(path)
        for node in ast.parse(source).body:
            for target in getattr(node, "targets", []):
                name = getattr(target, "id", None)
                if name in task.params and name not in ("upstream", "product") and not (
                        isinstance(node.value, ast.Constant) and node.value.value is None):
                    findings.append(_finding(
                        "NB901", shown, index, f"parameters cell sets {name} = {ast.unparse(node.value)}, but a "
                        f"build injects {task.params[name]!r} from {param_source(name)}", ast.unparse(node),
                        f"change it in settings.ini, and set {name} = None here"))
    return findings


def unclean_notebooks(paths, root: Path) -> list[Finding]:
    """Notebooks that a save in JupyterLab would change (`mlops_nb.notebook_clean`)."""
    from mlops_nb.notebook_clean import clean_file

    return [_finding("NB902", Path(p).relative_to(root) if Path(p).is_relative_to(root) else Path(p), None,
                     "not clean: a save in JupyterLab would change it", "metadata or outputs differ from a clean save",
                     "run `mlops-nb clean`") for p in paths if clean_file(p, check=True)]
