"""Shared fixtures: a copy of the project built once per session with small parameters, and free ports."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlops_nb.contracts import ModelCard
from mlops_nb.pipeline import TELEMETRY_OFF
from mlops_nb.products import file_sha256
from mlops_nb.serving.scoring import ScoringCore

# as root, headless, on a machine with no outside network (see shared/STACK-NOTES.md)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("notebooks", "mlops_nb", "pipeline.yaml", "dag.yaml", "settings.ini", "bentofile.yaml",
                 "pyproject.toml", ".jupyter", "docs")
BIN = Path(sys.executable).parent
TEST_EPOCHS = 40  # fewer leave the digits MLP short of the logistic regression baseline + [gates] min_lift


def project_env(root: Path, **overrides: str) -> dict[str, str]:
    """Environment for a subprocess working on the project copy at `root`: its own stores, only `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_NB_")}
    return {**env, **TELEMETRY_OFF, "BENTOML_HOME": str(root / ".bentoml"), "PATH": f"{BIN}:{env['PATH']}",
            "PYTHONPATH": str(root), **overrides}


def copy_project(dest: Path, *, commit: bool = True) -> Path:
    """Copy the project's sources to `dest` (optionally as a fresh git repository with one commit)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        else:
            shutil.copy2(src, dest / name)
    (dest / ".gitignore").write_text((REPO / ".gitignore").read_text())
    if commit:
        git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
        for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "snapshot of the project"]):
            subprocess.run([*git, *args], cwd=dest, check=True)
    return dest


def run_build(root: Path, *args: str, check: bool = True, **overrides: str) -> subprocess.CompletedProcess:
    """`ploomber build ARGS` in the project copy at `root`, with TEST_EPOCHS unless `overrides` say otherwise."""
    overrides = {"MLOPS_NB_TRAINING_EPOCHS": str(TEST_EPOCHS), **overrides}
    result = subprocess.run([str(BIN / "ploomber"), "build", *args], cwd=root, env=project_env(root, **overrides),
                            capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"build failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def ran_tasks(result: subprocess.CompletedProcess) -> set[str]:
    """Names of the tasks that ploomber's build report marks as run."""
    rows = [line.split() for line in result.stdout.splitlines()]
    return {row[0] for row in rows if len(row) >= 2 and row[1] == "True"}


@pytest.fixture(scope="session")
def built_project(tmp_path_factory) -> Path:
    """A git-committed copy of the project, built end to end once with TEST_EPOCHS."""
    root = copy_project(tmp_path_factory.mktemp("project"))
    run_build(root)
    return root


def bento_tag(root: Path) -> str:
    """The tag of the bento the build at `root` made."""
    from mlops_nb.products import read_json

    return read_json(root / "products/bento/bento.json")["bento_tag"]


@pytest.fixture(scope="session")
def server(built_project, tmp_path_factory):
    """`bentoml serve <bento tag>` from the build's bento, on a free loopback port, once per session (the service
    and batch tests share it); yields (url, server log, prediction log); stopped at the end.

    The build is brought back to the session's settings first (other modules' tests change them), so the train
    product is the served model's; the tests that use it run last (`pytest_collection_modifyitems`), after every
    test that rebuilds the project or moves the champion."""
    from mlops_nb.serving.bento import served

    run_build(built_project)
    folder = tmp_path_factory.mktemp("serve")
    log, predictions = folder / "serve.log", folder / "predictions.jsonl"
    env = project_env(built_project, MLOPS_NB_MONITORING_PREDICTION_LOG=str(predictions))
    with served(bento_tag(built_project), cwd=built_project, env=env, log=log) as url:
        yield url, log, predictions


def split_frame(root: Path):
    """The test split of the build at `root` as a DataFrame, and the snapshot's manifest."""
    from mlops_nb.products import read_json
    from mlops_nb.research.data import read_snapshot

    manifest = read_json(root / "products/snapshot/manifest.json")
    test = read_json(root / "products/snapshot/split.json")["test"]
    return read_snapshot(manifest["path"], manifest["sha256"]).iloc[test], manifest


@pytest.fixture(scope="session")
def test_split(built_project):
    """(features as float32, labels) of the built project's test split."""
    frame, manifest = split_frame(built_project)
    return frame[manifest["features"]].to_numpy(np.float32), frame[manifest["target"]].to_numpy()


def pytest_collection_modifyitems(items):
    """Run the tests on the session's served bento last, in their usual order: it is started once, and tests
    elsewhere rebuild the project and move the champion, which would leave it serving an older version."""
    items.sort(key=lambda item: "server" in getattr(item, "fixturenames", ()))


def debian_command(name: str, package: str | None = None) -> str:
    """The path of a command from a Debian package (.ci/run installs it); a failure under CI=true, else a skip with
    the reason."""
    path = shutil.which(name)
    if path is None:
        why = f"Debian's {name} is not installed (`apt-get install -y {package or name}`)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return path


def chromium() -> str:
    """Debian's Chromium for Playwright's `executable_path`."""
    return debian_command("chromium")


def engine_python(name: str) -> Path:
    """The Python of a test-only engine's own virtual environment (`$ENGINES_CACHE/NAME`, made by .ci/run): a failure
    under CI=true when it is missing, else a skip with the reason."""
    venv = Path(os.environ.get("ENGINES_CACHE", Path.home() / ".cache/mlops-nb-engines/current")) / name
    if not (venv / ".installed").exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{venv} is missing: .ci/run makes it")
        pytest.skip(f"{venv} is missing: see .ci/run for how to make it")
    return venv / "bin/python"


@contextmanager
def jupyter_lab(root: Path, log: Path, *, user_settings: dict | None = None, timeout_s: float = 120,
                plain: bool = False):
    """`mlops-nb lab` as README starts it (`plain`: `jupyter lab`), in `root`, on a free loopback port with a token;
    yields (url, token).

    The server gets its own runtime folder and JupyterLab user-settings folder (`user_settings`: plugin id ->
    settings), never root's."""
    from mlops_nb.serving.bento import free_port

    port, token = free_port(), secrets.token_hex(16)
    command = [*([str(BIN / "jupyter")] if plain else [str(BIN / "mlops-nb")]), "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}"]
    settings_dir = log.parent / "lab-user-settings"
    for plugin, values in (user_settings or {}).items():
        package, _, name = plugin.partition(":")
        (settings_dir / package).mkdir(parents=True, exist_ok=True)
        (settings_dir / package / f"{name}.jupyterlab-settings").write_text(json.dumps(values))
    env = {**project_env(root), "JUPYTER_RUNTIME_DIR": str(log.parent / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(settings_dir)}
    url = f"http://127.0.0.1:{port}"
    with running(command, cwd=root, env=env, log=log, ready=f"{url}/api/status?token={token}", timeout_s=timeout_s):
        yield url, token


@contextmanager
def running(command: list[str], *, cwd: Path, env: dict, log: Path, ready: str, timeout_s: float = 120):
    """Run `command` as the leader of its own process group, output to `log`, until GET `ready` answers 200;
    stop the group at the end."""
    import httpx

    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert process.poll() is None, f"`{' '.join(command)}` exited:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(ready, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{ready} not ready after {timeout_s}s"
            time.sleep(0.5)
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def server_errors(log: Path) -> list[str]:
    """Jupyter server log lines that record a 5xx answer or a traceback."""
    return [line for line in log.read_text().splitlines()
            if re.search(r"\] 5\d\d (GET|POST|PUT|PATCH|DELETE) ", line) or line.startswith("Traceback")]


def tree_digest(*paths: Path) -> dict[str, str]:
    """SHA-256 of every file under `paths` (relative name -> hash): to prove nothing there changed."""
    return {str(f): file_sha256(f) for p in paths for f in sorted(p.rglob("*") if p.is_dir() else [p])
            if f.is_file()}


def git_status(root: Path) -> str:
    """`git status --porcelain` of the project copy at `root` (empty when clean)."""
    return subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture
def registry(tmp_path):
    """A project folder with an empty sqlite registry for `gate-test`, and a small ONNX model to register."""
    return make_registry(tmp_path)


def make_registry(folder: Path):
    """What the `registry` fixture gives, in `folder` (for fixtures of a wider scope)."""
    (folder / "settings.ini").write_text("[registry]\nmodel_name = gate-test\n[gates]\nmin_score = 0.9\n"
                                         "max_regression = 0.01\n")
    import torch

    from mlops_nb.onnx_export import export_onnx
    from mlops_nb.research.model import MLP, Standardizer
    from mlops_nb.settings import load_settings

    settings = load_settings(folder, environ={})
    torch.manual_seed(0)
    onnx_path = export_onnx(MLP(4, 3, (8,), 0.0).eval(), Standardizer([0.0] * 4, [1.0] * 4, [0.0] * 4),
                            folder / "m.onnx")
    return settings, onnx_path


def gate_card(run_id: str, accuracy: float, **fields):
    """The model card of `registry`'s small ONNX model (4 features, 3 classes), claiming `accuracy`."""
    card = dict(model_name="gate-test", run_id=run_id, variant="fp32", features=["a", "b", "c", "d"],
                classes=["x", "y", "z"], feature_min=0, feature_max=1, data_sha256="abc", onnx_sha256="def",
                weights_sha256="123", test_accuracy=accuracy, parity_max_abs_diff=1e-7)
    return ModelCard(**{**card, **fields})


def register(settings, onnx_path, accuracy, **fields):
    """Register the ONNX model with a model card claiming `accuracy` (other card `fields` as given), then apply gates
    (floor 0.9, margin 0.01)."""
    import numpy as np

    from mlops_nb.registry import apply_gates, register_onnx
    from mlops_nb.tracking import start_training_run

    run_id = start_training_run(params={"lr": 0.1}, data_hash="abc", settings=settings)
    card = gate_card(run_id, accuracy, **fields)
    version = register_onnx(card=card, onnx_path=onnx_path, input_example=np.zeros((2, 4)),
                            extra={"reference_profile.json": {"range": [0, 1]}}, settings=settings)
    result = apply_gates(card, version.version, settings.gates, settings)
    return version.version, result


def prediction_log(path, x, answers, *, name, version, start=0, torn=False, shadow=True):
    """A prediction log in the PredictionRecord shape, one row per record (plus an empty-input shadow record);
    `answers`: the served model's (label, confidence) per row (digits: the class index is the label)."""
    with open(path, "wb") as f:
        for i, (row, (label, confidence)) in enumerate(zip(x, answers)):
            base = {"schema_version": 1, "request_id": f"r{start + i}", "time": 1.7e9 + start + i,
                    "model_name": name, "model_version": version, "subject": None, "labels": [int(label)],
                    "confidence": [float(confidence)], "latency_ms": 1.0}
            f.write(orjson.dumps({**base, "role": "champion", "inputs": [row.tolist()]}) + b"\n")
            if shadow and i % 10 == 0:
                f.write(orjson.dumps({**base, "role": "shadow", "model_version": "99", "inputs": []}) + b"\n")
        if torn:
            f.write(b'{"schema_version": 1, "request_id": "torn", "inputs": [[0.0, 1')
    return path


def served_session(root: Path):
    """An ONNX Runtime session on the build's served variant (the registered file)."""
    from mlops_nb.onnx_export import ort_session
    from mlops_nb.products import read_json

    return ort_session(read_json(root / "products" / "export" / "export.json")["served_path"])


def served_answers(session, x):
    """The served variant's (label index, confidence) for each row, as the served API logs them."""
    from mlops_nb.onnx_export import onnx_predict

    probabilities = onnx_predict(session, x)
    return np.column_stack([probabilities.argmax(axis=1), probabilities.max(axis=1)])


# ---- tiny ONNX classifiers: the real ScoringCore on graphs built in the test (fallback faults, protocol codecs)

CLASSES = ["x", "y", "z"]
SIDE = 512  # the slow graph's matrices: one step is SIDE**3 multiply-adds


def graph(kind: str, n_features: int, n_classes: int, *, input_name: str = "x", output_name: str = "y",
          weights=None, slow_steps: int = 30) -> onnx.ModelProto:
    """A classifier graph with the served model's input and output (`[N, n_features]` -> `[N, n_classes]`).

    good: softmax(x @ weights). error: a Gather whose indices are out of range (fails when run). nonfinite:
    sqrt(-1 - |x @ weights|) (NaN). slow: the good answer plus 0 x the sum of `slow_steps` chained SIDE x SIDE
    matrix products in a Loop whose start depends on the input (nothing can be folded away in advance)."""
    weights = np.eye(n_features, n_classes) if weights is None else weights
    init = [numpy_helper.from_array(np.asarray(weights, np.float32), "w")]
    nodes = [helper.make_node("MatMul", [input_name, "w"], ["logits"])]
    if kind in ("good", "slow"):
        nodes.append(helper.make_node("Softmax", ["logits"], [output_name if kind == "good" else "p"], axis=1))
    elif kind == "error":
        init.append(numpy_helper.from_array(np.arange(n_classes, dtype=np.int64) + 10**6, "idx"))
        nodes = [helper.make_node("Gather", [input_name, "idx"], [output_name], axis=1)]
    elif kind == "nonfinite":
        init.append(numpy_helper.from_array(np.float32(-1), "minus_one"))
        nodes += [helper.make_node("Abs", ["logits"], ["abs"]), helper.make_node("Sub", ["minus_one", "abs"], ["neg"]),
                  helper.make_node("Sqrt", ["neg"], [output_name])]
    if kind == "slow":
        init += [numpy_helper.from_array(np.full((SIDE, SIDE), 1 / SIDE, np.float32), "big"),
                 numpy_helper.from_array(np.int64(slow_steps), "steps"), numpy_helper.from_array(np.array(True), "go"),
                 numpy_helper.from_array(np.float32(0), "zero")]
        square = [SIDE, SIDE]
        body = helper.make_graph(
            [helper.make_node("MatMul", ["s_in", "big"], ["s_out"]), helper.make_node("Identity", ["c_in"], ["c_out"])],
            "step", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                     helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
                     helper.make_tensor_value_info("s_in", TensorProto.FLOAT, square)],
            [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("s_out", TensorProto.FLOAT, square)])
        nodes += [helper.make_node("ReduceSum", [input_name], ["total"], keepdims=0),
                  helper.make_node("Add", ["big", "total"], ["start"]),
                  helper.make_node("Loop", ["steps", "go", "start"], ["end"], body=body),
                  helper.make_node("ReduceSum", ["end"], ["end_sum"], keepdims=0),
                  helper.make_node("Mul", ["end_sum", "zero"], ["nothing"]),
                  helper.make_node("Add", ["p", "nothing"], [output_name])]
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", n_features])
    y = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", n_classes])
    model = helper.make_model(helper.make_graph(nodes, kind, [x], [y], init),
                              opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def tiny_core(folder, kind: str, version: str, **options) -> ScoringCore:
    folder.mkdir(parents=True)
    onnx.save(graph(kind, 4, 3, **options), folder / "model.onnx")
    card = ModelCard(model_name="fb-test", model_version=version, run_id="r", variant="fp32",
                     features=["a", "b", "c", "d"], classes=CLASSES, feature_min=0, feature_max=1, data_sha256="d",
                     onnx_sha256=file_sha256(folder / "model.onnx"), weights_sha256="w", test_accuracy=0.9,
                     parity_max_abs_diff=0.0)
    return ScoringCore(folder, card)
