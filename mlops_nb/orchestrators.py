"""Hand the project's DAG to an orchestrator (Airflow 3, Kubeflow Pipelines 2): `export` writes it from the factory's
DAG, and each of its tasks runs `mlops-nb run-task NAME`, which builds that one ploomber task (same notebook, params
and upstream products as `ploomber build`), with products on shared storage ([orchestrator] storage)."""

from __future__ import annotations

import hashlib
import json
import pprint
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from string import Template

from mlops_nb.pipeline import dag_for, discard_failed_products, telemetry_off
from mlops_nb.settings import Settings
from mlops_nb.tracking import git

__all__ = ["ENGINES", "RUNNERS", "PlannedTask", "OrchestratorError", "shared_settings", "plan", "run_task", "export"]

ENGINES = {"airflow": "airflow_dag.py.tmpl", "kfp": "kfp_pipeline.py.tmpl"}
# kubernetes: every task a pod of [orchestrator] image (the cluster form); local: a process in this project's
# virtual environment (the engine's own local runner runs the DAG end to end on this machine)
RUNNERS = ("kubernetes", "local")
TEMPLATES = Path(__file__).resolve().parent / "templates"


class OrchestratorError(RuntimeError):
    """A task cannot run as exported: unknown name, a project that differs from the export, or a failed build."""


@dataclass(frozen=True)
class PlannedTask:
    """One task of the DAG as an orchestrator sees it: what runs, after what, what it writes (relative to the
    products folder), a hash of everything it runs with (params, products, code), which `run-task` checks, and the
    paths its params name inside the products folder (the snapshot store), kept on storage too."""

    name: str
    source: str
    upstream: tuple[str, ...]
    products: tuple[str, ...]
    params_sha256: str
    shared: tuple[str, ...] = ()


def shared_settings(settings: Settings) -> Settings:
    """`settings` with the products folder on [orchestrator] storage when that is a mounted path."""
    storage = settings.orchestrator.storage
    if not storage or settings.orchestrator.remote:
        return settings
    return settings.model_copy(update={"paths": settings.paths.model_copy(update={"products": Path(storage)})})


def _relative(value, settings: Settings):
    """A param or product with the machine's folders as placeholders: the image's project lies elsewhere."""
    text = json.dumps(value, sort_keys=True)
    for folder, name in ((settings.products_dir, "{products}"), (settings.root, "{root}")):
        text = re.sub(re.escape(json.dumps(str(folder))[1:-1]) + r'(?=[/"])', name, text)  # whole folders only
    return json.loads(text)


def _plan(dag, settings: Settings) -> list[PlannedTask]:
    tasks = []
    for name in dag.keys():
        task = dag[name]
        source = task.source.primitive
        source = (f"{source.__module__}.{source.__qualname__}" if callable(source) else
                  str(Path(task.source.loc).relative_to(settings.root)))
        products = task.product.to_json_serializable() if hasattr(task.product, "products") else str(task.product)
        products = sorted(products.values()) if isinstance(products, dict) else [products]
        relative = _relative({"params": task.params.to_json_serializable(params_only=True), "products": products,
                              "source": source}, settings)
        inside = [v.removeprefix("{products}/") for v in relative["params"].values()
                  if isinstance(v, str) and v.startswith("{products}/")]
        tasks.append(PlannedTask(
            name, source, tuple(task.upstream), tuple(p.removeprefix("{products}/") for p in relative["products"]),
            hashlib.sha256(json.dumps(relative, sort_keys=True).encode()).hexdigest(), tuple(inside)))
    return tasks


def plan(settings: Settings) -> list[PlannedTask]:
    """The DAG `ploomber build` runs (read from the factory, never from pipeline.yaml's text), task by task."""
    shared = shared_settings(settings)
    return _plan(dag_for(shared), shared)


def _store(settings: Settings):
    """The object store of [orchestrator] storage, as an fsspec filesystem and the prefix inside it."""
    from fsspec.core import url_to_fs

    return url_to_fs(settings.orchestrator.storage)


def _kept(task: PlannedTask) -> list[str]:
    """What a task leaves on storage: its products, ploomber's record of what built each (without which ploomber
    takes a product as missing), and the paths its params name inside the products folder (the snapshot store)."""
    metadata = [str(PurePosixPath(p).with_name(f".{PurePosixPath(p).name}.metadata")) for p in task.products]
    return [*task.products, *metadata, *task.shared]


def _copy(fs, prefix: str, products: Path, relatives, *, upload: bool) -> None:
    """Copy products (files or folders, relative to the products folder) to or from the object store."""
    for relative in relatives:
        local, remote = products / relative, f"{prefix}/{relative}"
        if upload and local.exists():
            fs.makedirs(remote.rpartition("/")[0], exist_ok=True)
            if local.is_dir():  # a trailing slash copies the contents: never a folder nested in its own copy
                fs.put(f"{local}/", f"{remote}/", recursive=True)
            else:
                fs.put(str(local), remote)
        elif not upload and fs.exists(remote):
            local.parent.mkdir(parents=True, exist_ok=True)
            if fs.isdir(remote):
                fs.get(f"{remote}/", f"{local}/", recursive=True)
            else:
                fs.get(remote, str(local))


def _ancestors(planned: dict[str, PlannedTask], name: str) -> list[str]:
    """Every task `name` depends on, directly or not: ploomber takes a task as outdated when any of them is missing."""
    found, todo = [], list(planned[name].upstream)
    while todo:
        task = todo.pop()
        if task not in found:
            found.append(task)
            todo += planned[task].upstream
    return found


def run_task(settings: Settings, name: str, params_sha256: str | None = None) -> Path:
    """Build one task as `ploomber build` would, forced, on shared storage; returns the products folder.

    With an object store, what every task it depends on kept (products, ploomber's metadata, the snapshot store) is
    copied in first, and this task's copied out after (a failed task's partly run notebook instead).
    """
    telemetry_off()
    shared = shared_settings(settings)
    dag = dag_for(shared)
    planned = {task.name: task for task in _plan(dag, shared)}
    if name not in planned:
        raise OrchestratorError(f"no task {name!r} in this project's DAG; tasks: {', '.join(planned)}")
    if params_sha256 and planned[name].params_sha256 != params_sha256:
        raise OrchestratorError(
            f"task {name!r} differs from the exported DAG (its params, products, code or data changed since the "
            f"export: {planned[name].params_sha256[:12]} here, {params_sha256[:12]} exported); rebuild the image "
            "from the same commit and settings, or export again")
    products, remote = shared.products_dir, shared.orchestrator.remote
    if remote:
        fs, prefix = _store(shared)
        _copy(fs, prefix, products, [r for up in _ancestors(planned, name) for r in _kept(planned[up])], upload=False)
    dag.render()
    try:
        dag[name].build(force=True)
    except Exception as error:
        discard_failed_products(dag)
        if remote:  # the partly run notebook is the record of what went wrong: keep it beyond the pod
            failed = [str(PurePosixPath(p).with_suffix(".failed.ipynb")) for p in planned[name].products
                      if p.endswith(".ipynb")]
            _copy(fs, prefix, products, failed, upload=True)
        cause = error
        while cause.__cause__ is not None:  # ploomber wraps papermill's error, which names the failing cell's
            cause = cause.__cause__
        raise OrchestratorError(f"task {name!r} failed: {type(cause).__name__}: {cause}") from error
    if remote:
        _copy(fs, prefix, products, _kept(planned[name]), upload=True)
    return products


def export(settings: Settings, engine: str, outdir: Path | str, runner: str = "kubernetes") -> tuple[list[Path],
                                                                                                        list[str]]:
    """Write the orchestrator's DAG file (and, for the cluster form, the pipeline image's Dockerfile) to `outdir`;
    returns the files and warnings about settings that keep the cluster form from sharing its products."""
    if engine not in ENGINES or runner not in RUNNERS:
        raise OrchestratorError(f"engine must be one of {sorted(ENGINES)}, runner one of {list(RUNNERS)}")
    shared, orchestrator = shared_settings(settings), settings.orchestrator
    warnings = []
    if runner == "kubernetes":
        if not orchestrator.storage:
            warnings.append("[orchestrator] storage is empty: each pod keeps its products to itself; set a mounted "
                            "path (with volume_claim) or an object-store URI")
        if orchestrator.storage and not orchestrator.remote and not orchestrator.volume_claim:
            warnings.append(f"[orchestrator] storage is the path {orchestrator.storage} but volume_claim is empty: "
                            "each pod sees its own disk there unless the cluster mounts it otherwise")
        if not settings.tracking.remote:
            warnings.append(f"[tracking] uri is {settings.tracking.uri}, a file inside each pod: point it at an "
                            "`mlflow server` so training and registration share runs and versions")
        if engine == "kfp" and orchestrator.secret:
            warnings.append("[orchestrator] secret is not applied to KFP tasks: map its keys with kfp-kubernetes' "
                            "kubernetes.use_secret_as_env")
    dag_id = settings.registry.model_name.replace("-", "_").replace(".", "_")
    local = runner == "local"
    document = {
        "dag_id": dag_id, "commit": git(settings.root, "rev-parse", "HEAD") or "uncommitted", "runner": runner,
        "image": orchestrator.image,
        "storage": str(shared.products_dir) if local else orchestrator.storage,
        "volume_claim": orchestrator.volume_claim, "secret": orchestrator.secret,
        "command": [str(Path(sys.executable).with_name("mlops-nb")) if local else "mlops-nb", "run-task"],
        "cwd": str(settings.root) if local else "/project",
        "tasks": [asdict(task) for task in plan(settings)]}
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    source = Template((TEMPLATES / ENGINES[engine]).read_text()).substitute(
        plan=pprint.pformat(document, width=116, sort_dicts=False), dag_id=dag_id, commit=document["commit"])
    files = [outdir / f"{dag_id}_{engine}.py"]
    files[0].write_text(source)
    if not local:
        files += [outdir / "Dockerfile", outdir / "Dockerfile.dockerignore"]
        files[1].write_text(Template((TEMPLATES / "pipeline.Dockerfile.tmpl").read_text()).substitute(
            image=orchestrator.image, commit=document["commit"]))
        files[2].write_text((TEMPLATES / "pipeline.dockerignore.tmpl").read_text())
    return files, warnings
