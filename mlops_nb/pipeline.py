"""Thin adapter around ploomber: settings.ini -> pipeline.yaml params, builds, and notebooks run by hand."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from mlops_nb.settings import Settings, load_settings

__all__ = ["pipeline_env", "param_source", "make_dag", "dag_for", "build", "TaskContext", "task_context",
           "discard_failed_products", "record_notebooks"]

FRAMEWORK = Path(__file__).resolve().parent
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


def files_sha256(*paths: Path) -> str:
    """One SHA-256 over the names and bytes of files (folders: their *.py files), for params that track code."""
    from mlops_nb.products import file_sha256

    files = sorted(f for p in paths for f in (sorted(p.rglob("*.py")) if p.is_dir() else [p]))
    return hashlib.sha256("".join(f"{f.name}:{file_sha256(f)}" for f in files).encode()).hexdigest()


# pipeline.yaml placeholder -> the settings.ini [section] key it comes from
SETTING_PARAMS = {
    "data_source": ("data", "source"), "target": ("data", "target"), "val_fraction": ("data", "val_fraction"),
    "test_fraction": ("data", "test_fraction"), "feature_min": ("data", "feature_min"),
    "feature_max": ("data", "feature_max"), "min_class_fraction": ("data", "min_class_fraction"),
    **{key: ("training", key) for key in ("seed", "epochs", "batch_size", "learning_rate", "weight_decay",
                                          "hidden_sizes", "dropout", "torch_threads")},
    **{key: ("export", key) for key in ("opset", "parity_tolerance", "int8_max_accuracy_drop")},
    "model_name": ("registry", "model_name"), "min_accuracy": ("gates", "min_accuracy"),
    "max_regression": ("gates", "max_regression"), "service_name": ("serving", "service_name"),
}
# placeholders the build computes rather than reads from a setting
COMPUTED_PARAMS = {
    "products": "[paths] products", "snapshot_store": "[paths] products",
    "data_fingerprint": "the data file's SHA-256", "code_sha256": "a hash of the framework code (mlops_nb/)",
    "bento_sha256": "a hash of the framework code, bentofile.yaml and settings.ini",
}


def pipeline_env(settings: Settings) -> dict:
    """The values pipeline.yaml's {{placeholders}} take: every setting that shapes a product."""
    env = {name: getattr(getattr(settings, section), key) for name, (section, key) in SETTING_PARAMS.items()}
    env.update({
        "data_source": settings.data_source, "hidden_sizes": list(settings.training.hidden_sizes),
        "products": str(settings.products_dir), "snapshot_store": str(settings.products_dir / "snapshots"),
        "data_fingerprint": data_fingerprint(settings.data_source),
        # framework code and serving files are not notebook sources: hashing them makes a change re-run their tasks
        "code_sha256": files_sha256(FRAMEWORK),
        "bento_sha256": files_sha256(FRAMEWORK, settings.root / "bentofile.yaml", settings.root / "settings.ini"),
    })
    return env


def param_source(name: str) -> str:
    """Where the build takes a task param from, in words: `[training] epochs in settings.ini`, or how it is computed."""
    if name in SETTING_PARAMS:
        section, key = SETTING_PARAMS[name]
        return f"[{section}] {key} in settings.ini"
    return COMPUTED_PARAMS.get(name, "pipeline.yaml")


def make_dag(epochs: int = None, seed: int = None, root: str = None):
    """ploomber entry point (`ploomber build -e mlops_nb.pipeline.make_dag --epochs 1`): the DAG with settings."""
    telemetry_off()
    dag = dag_for(load_settings(root), epochs=epochs, seed=seed)
    from mlops_nb.lint import overridden_parameters

    for finding in overridden_parameters(dag):
        print(f"mlops-nb: {finding}", file=sys.stderr)
    return dag


def dag_for(settings: Settings, *, epochs: int | None = None, seed: int | None = None):
    """The ploomber DAG of `settings`' project, with the settings as pipeline.yaml's params."""
    from ploomber.spec import DAGSpec

    os.environ["MLOPS_NB_ROOT"] = str(settings.root)  # notebook kernels find the same project
    env = pipeline_env(settings)
    env.update({k: v for k, v in {"epochs": epochs, "seed": seed}.items() if v is not None})
    cwd = Path.cwd()
    os.chdir(settings.root)  # ploomber resolves sources relative to the working directory
    try:
        return DAGSpec(str(settings.root / "pipeline.yaml"), env=env).to_dag()
    finally:
        os.chdir(cwd)


def build(*, force: bool = False, epochs: int | None = None, seed: int | None = None, root=None):
    """Build the DAG incrementally; returns ploomber's build report (one row per task, with `Ran?`)."""
    dag = make_dag(epochs=epochs, seed=seed, root=root)
    return dag.build(force=force, show_progress=False)


@dataclass(frozen=True)
class TaskContext:
    """What a notebook's wiring cells use: upstream and product paths and params, resolved.

    `hand_run` is True outside a build: products then go to the scratch area (see `mlops_nb.scratch`).
    """

    name: str
    upstream: dict
    product: dict | str
    params: SimpleNamespace
    hand_run: bool = False


def task_context(name: str, upstream, product, **params) -> TaskContext:
    """Resolve a notebook's parameters cell, whether the pipeline injected it or the notebook runs by hand.

    Under `ploomber build`, the injected values pass through untouched. Run by hand (JupyterLab, nbval)
    `product` is None: params left as None come from the DAG (i.e. settings.ini), upstream products are read
    from the build (or from an earlier hand run), and products are written to the scratch area, never to the
    build's products; MLflow, BentoML and the prediction log point at the scratch area too.
    """
    if product is not None:
        return TaskContext(name, upstream, product, SimpleNamespace(**params))
    from mlops_nb.scratch import build_environ, open_scratch

    telemetry_off()
    settings = load_settings(environ=build_environ())
    task = dag_for(settings)[name]
    scratch = open_scratch(settings)
    context = TaskContext(
        name,
        upstream={up: _paths(t.product, scratch.upstream) for up, t in task.upstream.items()},
        product=_paths(task.product, scratch.product),
        params=SimpleNamespace(**{k: _scratch_param(task.params[k], settings, scratch) if v is None else v
                                  for k, v in params.items()}),
        hand_run=True)
    where = scratch.root.relative_to(settings.root) if scratch.root.is_relative_to(settings.root) else scratch.root
    print(f"Hand run of task {name!r}: reads the build's products, writes to {where}/ (products, MLflow store, "
          "BentoML home, prediction log). The build's products and registry stay untouched.")
    return context


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
