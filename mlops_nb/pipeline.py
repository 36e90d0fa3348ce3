"""Thin adapter around ploomber: settings.ini -> pipeline.yaml params, builds, and notebooks run by hand."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

from mlops_nb.settings import Settings, load_settings

__all__ = ["pipeline_env", "make_dag", "build", "task_context", "discard_failed_products", "record_notebooks"]

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


def pipeline_env(settings: Settings) -> dict:
    """The values pipeline.yaml's {{placeholders}} take: every setting that shapes a product."""
    d, t, e = settings.data, settings.training, settings.export
    return {
        "products": str(settings.products_dir),
        "snapshot_store": str(settings.products_dir / "snapshots"),
        "data_source": settings.data_source, "data_fingerprint": data_fingerprint(settings.data_source),
        "target": d.target,
        "val_fraction": d.val_fraction, "test_fraction": d.test_fraction,
        "feature_min": d.feature_min, "feature_max": d.feature_max, "min_class_fraction": d.min_class_fraction,
        "seed": t.seed, "epochs": t.epochs, "batch_size": t.batch_size, "learning_rate": t.learning_rate,
        "weight_decay": t.weight_decay, "hidden_sizes": list(t.hidden_sizes), "dropout": t.dropout,
        "torch_threads": t.torch_threads,
        "opset": e.opset, "parity_tolerance": e.parity_tolerance, "int8_max_accuracy_drop": e.int8_max_accuracy_drop,
        "model_name": settings.registry.model_name, "min_accuracy": settings.gates.min_accuracy,
        "max_regression": settings.gates.max_regression, "service_name": settings.serving.service_name,
        # framework code and serving files are not notebook sources: hashing them makes a change re-run their tasks
        "code_sha256": files_sha256(FRAMEWORK),
        "bento_sha256": files_sha256(FRAMEWORK, settings.root / "bentofile.yaml", settings.root / "settings.ini"),
    }


def make_dag(epochs: int = None, seed: int = None, root: str = None):
    """ploomber entry point (`ploomber build -e mlops_nb.pipeline.make_dag --epochs 1`): the DAG with settings."""
    from ploomber.spec import DAGSpec

    telemetry_off()
    settings = load_settings(root)
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


def task_context(name: str, upstream, product, **params) -> SimpleNamespace:
    """What a notebook needs: resolved `upstream`, `product` and params, whether injected by the pipeline or not.

    Under `ploomber build`, the injected values pass through untouched. Run by hand (JupyterLab, nbval)
    `product` is None: the paths and any param left as None come from the DAG, i.e. settings.ini.
    """
    if product is not None:
        return SimpleNamespace(upstream=upstream, product=product, params=SimpleNamespace(**params))
    task = make_dag()[name]
    resolved = {k: (task.params[k] if v is None else v) for k, v in params.items()}
    return SimpleNamespace(
        upstream={up: _paths(t.product) for up, t in task.upstream.items()},
        product=_paths(task.product),
        params=SimpleNamespace(**resolved),
    )


def _paths(product):
    if hasattr(product, "to_json_serializable"):
        return product.to_json_serializable()
    return str(product)


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
