"""The built bento served for real (`bentoml serve` subprocess on 127.0.0.1), against the registry and ONNX Runtime."""

import asyncio
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from conftest import BIN, project_env

from mlops_nb.bento import served
from mlops_nb.monitoring import read_prediction_log
from mlops_nb.onnx_export import onnx_predict, ort_session
from mlops_nb.products import read_json
from mlops_nb.registry import champion
from mlops_nb.research.data import read_snapshot
from mlops_nb.research.model import Standardizer, load_model
from mlops_nb.settings import load_settings


@pytest.fixture(scope="module")
def server(built_project, tmp_path_factory):
    """`bentoml serve <bento tag>` from the build's bento, on a free loopback port; stopped afterwards."""
    bento = read_json(built_project / "products/bento/bento.json")["bento_tag"]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = project_env(built_project, MLOPS_NB_MONITORING_PREDICTION_LOG=str(built_project / "logs/predictions.jsonl"))
    with served(bento, cwd=built_project, env=env, log=log) as url:
        yield url, log


@pytest.fixture(scope="module")
def bento_model(built_project):
    """What the service loaded from the bento model in the built project's store: metadata, preprocessing, ONNX."""
    env = project_env(built_project)
    code = ("import bentoml, json, sys; m = bentoml.models.get(sys.argv[1] + ':latest'); "
            "print(json.dumps({'path': m.path, 'meta': m.info.metadata}))")
    settings = load_settings(built_project, environ={})
    out = subprocess.run([str(BIN / "python"), "-c", code, settings.registry.model_name], env=env,
                         capture_output=True, text=True, check=True).stdout
    found = json.loads(out.strip().splitlines()[-1])
    path = Path(found["path"])
    standardizer = Standardizer.from_dict(json.loads((path / "preprocessing.json").read_text()))
    return SimpleNamespace(meta=found["meta"], standardizer=standardizer, session=ort_session(path / "model.onnx"))


@pytest.fixture(scope="module")
def test_split(built_project):
    products = built_project / "products"
    manifest = read_json(products / "snapshot/manifest.json")
    frame = read_snapshot(manifest["path"], manifest["sha256"]).iloc[read_json(products / "snapshot/split.json")["test"]]
    return frame[manifest["features"]].to_numpy(np.float32), frame[manifest["target"]].to_numpy()


def test_http_predictions_equal_in_process_onnx_runtime_on_the_test_split(server, bento_model, test_split):
    url, _ = server
    features, labels = test_split
    expected = onnx_predict(bento_model.session, bento_model.standardizer.transform(features))
    response = httpx.post(f"{url}/predict", json={"instances": features.tolist()}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    served = np.array([p["probabilities"] for p in body["predictions"]])
    # fp32 answers do not depend on how the server batches rows; the export step serves int8 only when its
    # labels do not either (probabilities still move slightly with the batch's activation range)
    assert np.abs(served - expected).max() < (1e-6 if bento_model.meta["variant"] == "fp32" else 0.2)
    assert [p["label"] for p in body["predictions"]] == expected.argmax(1).tolist()
    assert (expected.argmax(1) == labels).mean() >= 0.95


def test_every_served_request_is_logged_for_monitoring(server, built_project, test_split):
    url, _ = server
    features, _ = test_split
    body = httpx.post(f"{url}/predict", json={"instances": features[:3].tolist()}, timeout=30).json()
    last = read_prediction_log(built_project / "logs/predictions.jsonl")[-1]
    assert last["instances"] == features[:3].tolist() and last["model_version"] == body["model_version"]
    assert last["labels"] == [p["label"] for p in body["predictions"]]


def test_no_training_serving_skew_in_preprocessing(built_project, bento_model, test_split):
    _, trained = load_model(built_project / "products/train/model.pt")
    features, _ = test_split
    assert np.array_equal(trained.transform(features), bento_model.standardizer.transform(features))


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


def test_bentoml_serve_from_the_project_folder_serves_the_same_champion(built_project, test_split):
    features, labels = test_split
    with served("", cwd=built_project, env=project_env(built_project)) as url:
        meta = httpx.get(f"{url}/model/metadata", timeout=10).json()
        body = httpx.post(f"{url}/predict", json={"instances": features[:20].tolist()}, timeout=30).json()
    settings = load_settings(built_project, environ={})
    assert meta["model_version"] == str(champion(settings.registry.model_name, settings).version)
    assert sum(p["label"] == y for p, y in zip(body["predictions"], labels[:20])) >= 18


def test_concurrent_requests_are_batched_and_all_answered_correctly(server, bento_model, test_split):
    url, _ = server
    features, _ = test_split
    rows = features[:64]

    async def send_all():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32)) as client:
            return await asyncio.gather(*(client.post(f"{url}/predict", json={"instances": [row]})
                                          for row in rows.tolist()))

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * len(rows)
    expected = onnx_predict(bento_model.session, bento_model.standardizer.transform(rows)).argmax(1)
    assert [r.json()["predictions"][0]["label"] for r in responses] == expected.tolist()
