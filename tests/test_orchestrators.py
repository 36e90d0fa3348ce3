"""The DAG handed to orchestrators: `mlops-nb export airflow|kfp` from the factory's DAG, `mlops-nb run-task` on
shared storage (a path or an object store), and, in the engines tier, Airflow 3 and Kubeflow Pipelines 2 themselves:
the cluster form loads, and the engine's local runner builds a model with the weights `ploomber build` gives."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import BIN, TEST_EPOCHS, REPO, engine_python, project_env, run_build

from mlops_nb.orchestrators import export, plan
from mlops_nb.pipeline import dag_for
from mlops_nb.products import read_json
from mlops_nb.reproduce import COMPARED
from mlops_nb.settings import SettingsError, load_settings

DAG_ID = "digits_classifier"


def cli(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mlops-nb"), *args], cwd=root, capture_output=True, text=True, timeout=900,
                          env=project_env(root, MLOPS_NB_TRAINING_EPOCHS=str(TEST_EPOCHS), **env))


def clone(project: Path, dest: Path) -> Path:
    """A git clone of `project`: the same commit and files, no products."""
    subprocess.run(["git", "clone", "-q", str(project), str(dest)], check=True)
    return dest


def exported(outdir: Path) -> dict:
    """The PLAN an exported file carries (a Python literal after `PLAN = `)."""
    import ast

    source = next(outdir.glob("*.py")).read_text()
    return ast.literal_eval(source.split("PLAN = ", 1)[1].split("\n\n\n", 1)[0])


def test_the_export_is_the_factorys_dag_task_for_task(tmp_path):
    settings = load_settings(REPO, environ={})
    dag = dag_for(settings)
    for engine in ("airflow", "kfp"):
        files, warnings = export(settings, engine, tmp_path / engine)
        document = exported(tmp_path / engine)
        assert [t["name"] for t in document["tasks"]] == list(dag.keys())
        assert {t["name"]: set(t["upstream"]) for t in document["tasks"]} == {n: set(dag[n].upstream) for n in dag}
        assert {t["name"]: t["source"] for t in document["tasks"]}["train"] == "notebooks/03_train.ipynb"
        assert document["image"] == settings.orchestrator.image and document["command"] == ["mlops-nb", "run-task"]
        assert any("[orchestrator] storage is empty" in w for w in warnings)
        assert any("[tracking] uri is sqlite" in w for w in warnings)
    assert [t.params_sha256 for t in plan(settings)] == [t["params_sha256"] for t in document["tasks"]]
    changed = plan(load_settings(REPO, environ={"MLOPS_NB_TRAINING_EPOCHS": "3"}))
    changed = [t.name for t, old in zip(changed, document["tasks"]) if t.params_sha256 != old["params_sha256"]]
    assert changed == ["train"]


def test_the_pipeline_image_dockerfile(tmp_path):
    files, _ = export(load_settings(REPO, environ={}), "airflow", tmp_path)
    dockerfile = (tmp_path / "Dockerfile").read_text()
    assert dockerfile.splitlines()[3] == "FROM python:3.11-slim"
    assert "PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile  # never the CUDA torch
    assert 'pip install -c requirements.lock.txt ".[cpu]"' in dockerfile
    assert "\nUSER mlops\n" in dockerfile and "useradd" in dockerfile
    ignored = (tmp_path / "Dockerfile.dockerignore").read_text().splitlines()
    assert {".venv", "products", "mlruns.db", ".bentoml"} <= set(ignored)  # this machine's state stays out


@pytest.mark.parametrize("storage", ["relative/path", "gs:bucket", "s3://user:hunter2@bucket/x"])
def test_storage_must_be_an_absolute_path_or_a_uri_without_credentials(tmp_path, storage):
    (tmp_path / "settings.ini").write_text(f"[orchestrator]\nstorage = {storage}\n")
    with pytest.raises(SettingsError, match=r"\[orchestrator\] storage") as error:
        load_settings(tmp_path, environ={})
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize("storage", ["", "s3://bucket/products"])
def test_a_volume_claim_needs_a_path_to_mount_at(tmp_path, storage):
    (tmp_path / "settings.ini").write_text(f"[orchestrator]\nstorage = {storage}\nvolume_claim = products\n")
    with pytest.raises(SettingsError, match="volume_claim mounts the claim at storage"):
        load_settings(tmp_path, environ={})


def test_run_task_refuses_a_project_that_differs_from_the_export(built_project):
    result = cli(built_project, "run-task", "validate", "--params-sha256", "0" * 64)
    assert result.returncode == 2
    assert "task 'validate' differs from the exported DAG" in result.stderr and "Traceback" not in result.stderr
    result = cli(built_project, "run-task", "deploy")
    assert result.returncode == 2 and "no task 'deploy'" in result.stderr and "snapshot, validate" in result.stderr


def test_run_task_copies_products_from_and_to_an_object_store(built_project, tmp_path):
    """Tasks each in a fresh clone at the same path (as pods of one image), products in an fsspec store (file://):
    each fetches what every task before it kept (ploomber checks them all), puts back its own products, executed
    notebook, metadata and the snapshot store; a second snapshot run nests nothing."""
    run_build(built_project)
    store = tmp_path / "store"
    storage = {"MLOPS_NB_ORCHESTRATOR_STORAGE": f"file://{store}",  # and one tracking store, as a server would be
               "MLOPS_NB_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}",
               "MLOPS_NB_TRACKING_ARTIFACT_ROOT": str(tmp_path / "mlartifacts")}
    for name in ("snapshot", "snapshot", "validate", "train", "evaluate"):
        shutil.rmtree(tmp_path / "pod", ignore_errors=True)
        root = clone(built_project, tmp_path / "pod")
        result = cli(root, "run-task", name, **storage)
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    assert (root / "products/validate/report.json").is_file()  # an ancestor, not a direct upstream of evaluate
    metrics = [{k: v for k, v in read_json(r / "evaluate/metrics.json").items() if k != "run_id"}
               for r in (store, built_project / "products")]
    assert metrics[0] == metrics[1]  # the same figures as the build's (its own training run)
    assert (store / "04_evaluate.ipynb").is_file() and (store / "evaluate/.metrics.json.metadata").is_file()
    kept = sorted(p.relative_to(store).as_posix() for p in (store / "snapshots").rglob("*") if p.is_file())
    assert kept and all(name.count("/") == 1 for name in kept), kept  # snapshots/<sha>.parquet, not nested


def engine_run(engine: str, built_project: Path, tmp_path: Path, loads: str, runs: list[str]) -> tuple[dict, dict]:
    """Export both forms from a clone of the session's build, load the cluster form with the engine's code (the
    `loads` script prints JSON), then run the local form with the engine's runner (`runs`, with {dags} and {python});
    returns what the engine loaded and the clone's registered model card."""
    python = engine_python(engine)
    run_build(built_project)  # back to the session's settings: its card is the one to match
    root = clone(built_project, tmp_path / "project")
    cluster, local = tmp_path / "cluster", tmp_path / "dags"
    engine_env = {"AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                  "AIRFLOW__CORE__DAGS_FOLDER": str(local)}
    for outdir, runner in ((cluster, "kubernetes"), (local, "local")):
        result = cli(root, "export", engine, str(outdir), "--runner", runner)
        assert result.returncode == 0, result.stderr
    loaded = subprocess.run([str(python), "-c", loads, str(cluster)], capture_output=True, text=True, timeout=300,
                            env=project_env(root, **engine_env))
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    started = time.monotonic()
    command = [str(python) if part == "{python}" else part.format(dags=local) for part in runs]
    result = subprocess.run(command, cwd=local, capture_output=True, text=True, timeout=1200,
                            env=project_env(root, MLOPS_NB_TRAINING_EPOCHS=str(TEST_EPOCHS), **engine_env))
    print(f"{engine}: the local run took {time.monotonic() - started:.0f} s")
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    card, expected = (read_json(r / "products/register/registration.json")["card"] for r in (root, built_project))
    assert {k: card[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}
    assert read_json(root / "products/record.json")["registration"]["version"]
    return json.loads(loaded.stdout.strip().splitlines()[-1]), exported(local)


AIRFLOW_LOADS = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
tasks = {t.task_id: {"operator": type(t).__name__, "upstream": sorted(t.upstream_task_ids), "image": t.image,
                     "command": [*t.cmds, *t.arguments]} for dag in bag.dags.values() for t in dag.tasks}
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": list(bag.dags), "tasks": tasks}))
"""


@pytest.mark.engines
def test_airflow_loads_the_cluster_dag_and_its_local_run_registers_the_ploomber_builds_weights(built_project,
                                                                                               tmp_path):
    (tmp_path / "airflow").mkdir()
    migrate = subprocess.run([str(engine_python("airflow").with_name("airflow")), "db", "migrate"], capture_output=True,
                             text=True, timeout=300, env=project_env(tmp_path, AIRFLOW_HOME=str(tmp_path / "airflow")))
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    loaded, document = engine_run("airflow", built_project, tmp_path, AIRFLOW_LOADS,
                                  [str(engine_python("airflow").with_name("airflow")), "dags", "test", DAG_ID])
    assert loaded["errors"] == {} and loaded["dags"] == [DAG_ID]
    for task in document["tasks"]:
        pod = loaded["tasks"][task["name"]]
        assert pod["operator"] == "KubernetesPodOperator" and pod["image"] == document["image"]
        assert pod["upstream"] == sorted(task["upstream"])
        assert pod["command"] == ["mlops-nb", "run-task", task["name"], "--params-sha256", task["params_sha256"]]


KFP_LOADS = """
import importlib.util, json, sys, tempfile
from pathlib import Path
from kfp import compiler
path = next(Path(sys.argv[1]).glob("*.py"))
spec = importlib.util.spec_from_file_location("exported", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
out = Path(tempfile.mkdtemp()) / "pipeline.yaml"
compiler.Compiler().compile(module.pipeline, str(out))
print(json.dumps({"yaml": out.read_text()}))
"""

KFP_RUNS = """
import importlib.util, sys
from pathlib import Path
from kfp import local
local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(Path.cwd() / "kfp-root"))
path = next(Path.cwd().glob("*.py"))
spec = importlib.util.spec_from_file_location("exported", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.pipeline()
"""


@pytest.mark.engines
def test_kfp_compiles_the_cluster_pipeline_and_its_local_run_registers_the_ploomber_builds_weights(built_project,
                                                                                                  tmp_path):
    loaded, document = engine_run("kfp", built_project, tmp_path, KFP_LOADS, ["{python}", "-c", KFP_RUNS])
    spec = yaml.safe_load(loaded["yaml"])
    executors = spec["deploymentSpec"]["executors"].values()
    assert {e["container"]["image"] for e in executors} == {document["image"]}
    assert all(e["container"]["command"] == ["mlops-nb", "run-task"] for e in executors)
    steps = spec["root"]["dag"]["tasks"]  # step id -> step; its taskInfo name is the DAG's task name
    assert all(step["inputs"]["parameters"]["name"]["runtimeValue"]["constant"] == step["taskInfo"]["name"]
               for step in steps.values())
    upstream = {step["taskInfo"]["name"]: sorted(steps[up]["taskInfo"]["name"] for up in step.get("dependentTasks", []))
                for step in steps.values()}
    assert upstream == {task["name"]: sorted(task["upstream"]) for task in document["tasks"]}
