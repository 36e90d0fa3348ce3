"""Thin adapter around ploomber: the DAG from dag.yaml with settings.ini sections as params, and hand runs."""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import nbformat
import yaml

from mlops_nb.settings import Settings, load_settings

__all__ = ["pipeline_env", "param_source", "code_files", "make_dag", "dag_for", "TaskContext", "task_context",
           "discard_failed_products", "record_notebooks", "SECTIONS", "WIRING"]

FRAMEWORK = Path(__file__).resolve().parent
WIRING = "dag.yaml"  # the tasks: sources, products, params; pipeline.yaml points ploomber at make_dag
SECTIONS = {name: field.annotation for name, field in Settings.model_fields.items() if name != "root"}
TELEMETRY_OFF = {"PLOOMBER_STATS_ENABLED": "false", "BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "1",
                 "MLFLOW_DISABLE_TELEMETRY": "true"}


def telemetry_off() -> None:
    """Switch off every engine's usage reporting for this process and its children."""
    os.environ.update(TELEMETRY_OFF)


def data_fingerprint(source: str) -> str:
    """What identifies the raw data before it is read: the file's SHA-256, or scikit-learn's version for digits.

    It is a param of the snapshot task, so a changed data file re-runs the DAG (ploomber only sees params).
    """
    if source == "digits":
        from importlib.metadata import version

        return f"scikit-learn=={version('scikit-learn')}"
    from mlops_nb.products import file_sha256

    return file_sha256(source) if Path(source).is_file() else f"missing:{source}"


def files_sha256(files, root: Path) -> str:
    """One SHA-256 over files' names (relative to `root` where they lie in it) and bytes, for params that track code."""
    from mlops_nb.products import file_sha256

    names = sorted(f"{f.relative_to(root) if f.is_relative_to(root) else f.relative_to(FRAMEWORK.parent)}:"
                   f"{file_sha256(f)}" for f in files)
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def _imported(source: str, package: str = "", *, everywhere: bool = True) -> set[str]:
    """Absolute names of what Python code imports (`from a import b` gives `a` and `a.b`, which may be a module):
    everywhere in it, or only in its top-level statements (what importing a module runs)."""
    tree = ast.parse(source)
    names = set()
    for node in ast.walk(tree) if everywhere else tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(filter(None, [package.rsplit(".", node.level - 1)[0] if node.level else "",
                                          node.module or ""]))
            names |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
    return names


def _module_file(name: str, roots) -> Path | None:
    parts = name.split(".")
    for root in roots:
        for candidate in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
            if candidate.is_file():
                return candidate
    return None


def code_files(notebook: Path, root: Path) -> set[Path]:
    """The project's and the framework's modules a notebook imports, directly or through the top-level imports of
    such modules (a function's own import inside it is left out: otherwise `task_context` would pull in everything)."""
    cells = nbformat.read(str(notebook), as_version=4).cells
    code = "\n".join(line for cell in cells if cell.cell_type == "code" for line in cell.source.splitlines()
                     if not line.lstrip().startswith(("%", "!")))
    roots, todo, found = (root, FRAMEWORK.parent), sorted(_imported(code)), set()
    while todo:
        name = todo.pop()
        path = _module_file(name, roots)
        if path is not None and path not in found:
            found.add(path)
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            todo += _imported(path.read_text(), package, everywhere=False)
    return found


# dag.yaml placeholders that are not settings sections, and where their values come from
COMPUTED_PARAMS = {
    "products": "[paths] products in settings.ini", "snapshot_store": "[paths] products in settings.ini",
    "candidate_store": "[paths] products in settings.ini",
    "seed": "[training] seed in settings.ini",
    "data_fingerprint": "the data file's SHA-256 (or scikit-learn's version for digits)",
    "code_sha256": "a SHA-256 of the project and mlops_nb modules this notebook imports",
    "bento_sha256": "a SHA-256 of what bentofile.yaml puts in the bento (serving code, settings.ini)",
}


def pipeline_env(settings: Settings) -> dict:
    """The values dag.yaml's {{placeholders}} take: each settings section whole, and the computed values."""
    from mlops_nb.serving.bento import bento_sources

    env = {name: getattr(settings, name).model_dump(mode="json") for name in SECTIONS}
    env["data"]["source"] = settings.data_source
    env.update(products=str(settings.products_dir), data_fingerprint=data_fingerprint(settings.data_source),
               bento_sha256=files_sha256(bento_sources(settings.root).values(), settings.root))
    return env


def param_source(name: str) -> str:
    """Where a build takes a task param from, in words (`the [training] section of settings.ini`)."""
    if name in SECTIONS:
        return f"the [{name}] section of settings.ini"
    return COMPUTED_PARAMS.get(name, WIRING)


def make_dag(root: str | None = None):
    """The factory pipeline.yaml names, so `ploomber build`, `status`, `plot`, `task` and `nb` load the project's DAG.

    It refuses a stale nbdev export and reports notebook parameters that a build would override.
    """
    from mlops_nb.export_check import check_exports
    from mlops_nb.lint import overridden_parameters

    telemetry_off()
    settings = load_settings(root)
    check_exports(settings.root)
    dag = dag_for(settings)
    for finding in overridden_parameters(dag, settings.root):
        print(f"mlops-nb: {finding}", file=sys.stderr)
    return dag


def dag_for(settings: Settings):
    """The ploomber DAG of `settings`' project: dag.yaml's wiring, settings sections as params, code hashes."""
    from ploomber.spec import DAGSpec

    root = settings.root
    # notebook kernels find the same project and import its own packages first
    os.environ["MLOPS_NB_ROOT"] = str(root)
    paths = [str(root), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    wiring = (root / WIRING).read_text()
    spec = yaml.safe_load(wiring)
    for task in spec["tasks"]:
        if str(task["source"]).endswith(".ipynb"):
            task.setdefault("params", {})["code_sha256"] = files_sha256(code_files(root / task["source"], root), root)
    cwd = Path.cwd()
    os.chdir(root)  # ploomber resolves sources relative to the working directory
    try:
        env = {key: value for key, value in pipeline_env(settings).items() if "{{" + key in wiring}
        return DAGSpec(spec, env=env, parent_path=str(root)).to_dag()
    finally:
        os.chdir(cwd)


@dataclass(frozen=True)
class TaskContext:
    """What a notebook's wiring cells use: upstream and product paths and params, resolved (sections typed).

    `hand_run` is True outside a build: products then go to the scratch area (see `mlops_nb.scratch`).
    """

    name: str
    upstream: dict
    product: dict | str
    params: SimpleNamespace
    hand_run: bool = False


def _typed(name: str, value):
    """A settings section passed as a param (a dict) as its typed section, validated; other params as they are."""
    return SECTIONS[name].model_validate(value) if name in SECTIONS and isinstance(value, dict) else value


def task_context(name: str, upstream, product, **params) -> TaskContext:
    """Resolve a notebook's parameters cell, whether the pipeline injected it or the notebook runs by hand.

    Under `ploomber build`, the injected values are used (settings sections typed). Run by hand (JupyterLab,
    nbval) `product` is None: params left as None come from the DAG (i.e. settings.ini), upstream products are
    read from the build (or from an earlier hand run), and products are written to the scratch area, never to the
    build's products; MLflow, BentoML and the prediction log point at the scratch area too. A hand run prints
    each resolved param and where it came from.
    """
    if product is not None:
        _forget_metadata(product)
        return TaskContext(name, upstream, product, SimpleNamespace(**{k: _typed(k, v) for k, v in params.items()}))
    from mlops_nb.scratch import build_environ, open_scratch

    telemetry_off()
    settings = load_settings(environ=build_environ())
    task = dag_for(settings)[name]
    scratch = open_scratch(settings)
    resolved = {k: (_scratch_param(task.params[k], settings, scratch), param_source(k)) if v is None else
                (v, "set in this notebook") for k, v in params.items()}
    context = TaskContext(
        name,
        upstream={up: _paths(t.product, scratch.upstream) for up, t in task.upstream.items()},
        product=_paths(task.product, scratch.product),
        params=SimpleNamespace(**{k: _typed(k, value) for k, (value, _) in resolved.items()}),
        hand_run=True)
    where = scratch.root.relative_to(settings.root) if scratch.root.is_relative_to(settings.root) else scratch.root
    print(f"Hand run of task {name!r}: reads the build's products, writes to {where}/ (products, MLflow store, "
          "BentoML home, prediction log). The build's products and registry stay untouched.")
    for key, (value, source) in resolved.items():
        print(f"  {key} = {value!r}  <- {source}")
    return context


def _forget_metadata(product) -> None:
    """Delete the ploomber metadata of a task's products as the task starts: a build killed before the task ends
    (SIGKILL runs no failure hook) then leaves nothing that the next build takes as up to date."""
    for path in map(Path, product.values() if isinstance(product, dict) else [product]):
        (path.parent / f".{path.name}.metadata").unlink(missing_ok=True)


def _scratch_param(value, settings: Settings, scratch):
    """A param as a hand run uses it: a path inside the build's products folder moves to the scratch area."""
    if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_relative_to(settings.products_dir):
        return str(scratch.product(value))
    return value


def _paths(product, where):
    """A ploomber product as plain path strings (a dict for a MetaProduct), each mapped through `where`."""
    if hasattr(product, "products"):
        return {key: str(where(str(p))) for key, p in product.to_json_serializable().items()}
    return str(where(str(product)))


def discard_failed_products(dag) -> None:
    """DAG on_failure hook: remove what each failed task wrote, so nothing half-built looks finished.

    A partially executed notebook is kept beside its product as `<name>.failed.ipynb`: the record of what went wrong.
    """
    from ploomber.constants import TaskStatus

    for task in dag.values():
        if task.exec_status != TaskStatus.Errored:
            continue
        for product in (task.product if hasattr(task.product, "products") else [task.product]):
            path = Path(str(product))
            product._delete_metadata()
            if path.suffix == ".ipynb" and path.exists():
                shutil.move(path, path.with_suffix(".failed.ipynb"))
            elif path.is_dir():  # a folder of files (the export's variants)
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def record_notebooks(product, upstream) -> None:
    """Last task: log every executed notebook of this build to the training run, then write the record."""
    from mlops_nb.products import read_json, write_json
    from mlops_nb.tracking import log_notebooks

    run_id = read_json(upstream["train"]["run"])["run_id"]
    notebooks = {name: prods["nb"] for name, prods in upstream.items()}
    log_notebooks(run_id, notebooks.values())
    write_json(product, {"run_id": run_id, "notebooks": notebooks,
                         "registration": read_json(upstream["register"]["registration"]),
                         "bento": read_json(upstream["bento"]["bento"])})
