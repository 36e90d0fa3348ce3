"""The built bento served for real (`bentoml serve` subprocess on 127.0.0.1), against the registry and ONNX Runtime."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import BIN, free_port, project_env

from mlops_nb.onnx_export import onnx_predict, ort_session
from mlops_nb.products import read_json
from mlops_nb.registry import champion
from mlops_nb.research.data import read_snapshot
from mlops_nb.research.model import Standardizer, load_model
from mlops_nb.settings import load_settings


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout}s")


@pytest.fixture(scope="module")
def server(built_project, tmp_path_factory):
    """`bentoml serve <bento tag>` from the build's bento, on a free loopback port; stopped afterwards."""
    port = free_port()
    bento = read_json(built_project / "products/bento/bento.json")["bento_tag"]
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("w")
    process = subprocess.Popen([str(BIN / "bentoml"), "serve", bento, "--host", "127.0.0.1", "--port", str(port)],
                               cwd=built_project, env=project_env(built_project), stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url, Path(log.name)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


@pytest.fixture(scope="module")
def bento_model(built_project):
    """The exact files the service loaded: the bento model in the BentoML store of the built project."""
    env = project_env(built_project)
    code = ("import bentoml, json, sys; m = bentoml.models.get(sys.argv[1] + ':latest'); "
            "print(json.dumps({'path': m.path, 'meta': m.info.metadata}))")
    settings = load_settings(built_project, environ={})
    out = subprocess.run([str(BIN / "python"), "-c", code, settings.registry.model_name], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def test_split(built_project):
    products = built_project / "products"
    manifest = read_json(products / "snapshot/manifest.json")
    frame = read_snapshot(manifest["path"], manifest["sha256"]).iloc[read_json(products / "snapshot/split.json")["test"]]
    return frame[manifest["features"]].to_numpy(np.float32), frame[manifest["target"]].to_numpy()


def test_http_predictions_equal_in_process_onnx_runtime_on_the_test_split(server, bento_model, test_split):
    url, _ = server
    features, labels = test_split
    path = Path(bento_model["path"])
    standardizer = Standardizer.from_dict(json.loads((path / "preprocessing.json").read_text()))
    expected = onnx_predict(ort_session(path / "model.onnx"), standardizer.transform(features))
    response = httpx.post(f"{url}/predict", json={"instances": features.tolist()}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    served = np.array([p["probabilities"] for p in body["predictions"]])
    # fp32 answers do not depend on how the server batches rows; the export step serves int8 only when its
    # labels do not either (probabilities still move slightly with the batch's activation range)
    assert np.abs(served - expected).max() < (1e-6 if bento_model["meta"]["variant"] == "fp32" else 0.2)
    assert [p["label"] for p in body["predictions"]] == expected.argmax(1).tolist()
    assert (expected.argmax(1) == labels).mean() >= 0.95


def test_no_training_serving_skew_in_preprocessing(built_project, bento_model, test_split):
    _, trained = load_model(built_project / "products/train/model.pt")
    served = Standardizer.from_dict(json.loads((Path(bento_model["path"]) / "preprocessing.json").read_text()))
    features, _ = test_split
    assert np.array_equal(trained.transform(features), served.transform(features))


def test_served_model_is_the_registry_champion(server, built_project):
    url, log = server
    settings = load_settings(built_project, environ={})
    current = champion(settings.registry.model_name, settings)
    meta = httpx.get(f"{url}/model/metadata", timeout=10).json()
    assert meta["model_version"] == str(current.version)
    assert meta["data_sha256"] == current.tags["mlops_nb.data_sha256"]
    assert meta["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    body = httpx.post(f"{url}/predict", json={"instances": [[0.0] * 64]}, timeout=10).json()
    assert body["model_version"] == str(current.version) and body["model_name"] == settings.registry.model_name
    text = log.read_text()
    assert "ONNX Runtime session on" in text and f"version {current.version}" in text


def test_health_and_prometheus_metrics(server):
    url, _ = server
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    httpx.post(f"{url}/predict", json={"instances": [[1.0] * 64]}, timeout=10)
    metrics = httpx.get(f"{url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "bentoml_service_request_total" in metrics.text


ROW = [0.0] * 64


@pytest.mark.parametrize("body, expected", [
    ({"instances": [[0.0] * 63]}, "instances[0] has 63 values; expected 64"),
    ({"instances": [ROW, [0.0] * 65]}, "instances[1] has 65 values; expected 64"),
    ({"instances": [[["x"]] + ROW[1:]]}, "Input should be a valid number"),
    ({"instances": [["abc"] + ROW[1:]]}, "Input should be a valid number"),
    ({"instances": [[-1.0] + ROW[1:]]}, "\"loc\":[\"instances\",0,0],\"msg\":\"Input should be greater than or equal to 0"),
    ({"instances": [ROW[1:] + [16.5]]}, "Input should be less than or equal to 16"),
    ({"instances": []}, "List should have at least 1 item"),
    ({"instances": [ROW] * 1025}, "List should have at most 1024 items"),
    ({"instances": ROW}, "\"loc\":[\"instances\",0],\"msg\":\"Input should be a valid array"),
    ({"instances": "1,2,3"}, "Input should be a valid array"),
    ({"rows": [ROW]}, "Field required"),
])
def test_bad_input_gets_a_4xx_naming_the_problem(server, body, expected):
    url, _ = server
    response = httpx.post(f"{url}/predict", json=body, timeout=30)
    assert 400 <= response.status_code < 500, response.text
    assert expected in response.text


@pytest.mark.parametrize("raw, expected", [
    (b'{"instances": [[NaN' + b", 0" * 63 + b"]]}", "Input should be a finite number"),
    (b'{"instances": [[Infinity' + b", 0" * 63 + b"]]}", "Input should be a finite number"),
    (b'{"instances": [[0, 0', "Invalid JSON"),
    (b"", "Field required"),
])
def test_non_finite_and_malformed_json_get_a_4xx(server, raw, expected):
    url, _ = server
    response = httpx.post(f"{url}/predict", content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert 400 <= response.status_code < 500, response.text
    assert expected in response.text
