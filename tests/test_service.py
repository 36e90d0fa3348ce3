"""The built bento served for real (`bentoml serve` subprocess on 127.0.0.1), against the registry and ONNX Runtime."""

import asyncio
import json
import subprocess
import time
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest
import yaml
from conftest import BIN, bento_tag, project_env

from mlops_nb.monitoring import read_prediction_log
from mlops_nb.onnx_export import onnx_predict, ort_session
from mlops_nb.products import read_json
from mlops_nb.registry import champion
from mlops_nb.research.model import load_model, predict_proba, weights_sha256
from mlops_nb.serving.bento import CARD, served
from mlops_nb.serving.scoring import occlusion
from mlops_nb.settings import load_settings

ROW = [0.0] * 64


@pytest.fixture(scope="module")
def bento_model(built_project):
    """The model folder the bento serves from the built project's store: model card and ONNX session."""
    code = ("import bentoml, sys; m = bentoml.models.get(sys.argv[1] + ':latest'); print(m.path)")
    settings = load_settings(built_project, environ={})
    out = subprocess.run([str(BIN / "python"), "-c", code, settings.registry.model_name],
                         env=project_env(built_project), capture_output=True, text=True, check=True).stdout
    path = Path(out.strip().splitlines()[-1])
    return json.loads((path / CARD).read_text()), ort_session(path / "model.onnx")


def predict(url: str, rows, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/predict", json={"instances": rows}, timeout=60, **kwargs)


def test_served_answers_equal_the_torch_pipeline_on_raw_rows_no_training_serving_skew(server, built_project,
                                                                                      bento_model, test_split):
    url, _, _ = server
    features, labels = test_split
    model, standardizer = load_model(built_project / "products/train/model.pt")
    assert weights_sha256(model) == bento_model[0]["weights_sha256"]  # the served model's own torch weights
    trained = predict_proba(model, standardizer.transform(features))  # preprocessing + model, as in training
    body = predict(url, features.tolist()).json()
    served_probs = np.array([p["probabilities"] for p in body["predictions"]])
    settings = load_settings(built_project, environ={})
    assert np.abs(served_probs - trained).max() <= settings.export.parity_tolerance
    assert [p["label"] for p in body["predictions"]] == trained.argmax(1).tolist()
    assert np.array_equal(served_probs.astype(np.float32), onnx_predict(bento_model[1], features))
    assert (trained.argmax(1) == labels).mean() >= 0.95


def test_every_answer_carries_a_request_id_that_is_in_its_prediction_log_line(server, test_split):
    url, _, predictions = server
    features, _ = test_split
    response = predict(url, features[:3].tolist())
    body = response.json()
    assert response.headers["x-request-id"] == body["request_id"]
    for _ in range(100):  # the writer thread appends in the background
        records = {r["request_id"]: r for r in read_prediction_log(predictions)} if predictions.exists() else {}
        if body["request_id"] in records:
            break
        time.sleep(0.05)
    record = records[body["request_id"]]
    assert record["inputs"] == features[:3].tolist() and record["model_version"] == body["model_version"]
    assert record["labels"] == [p["label"] for p in body["predictions"]] and record["role"] == "champion"
    assert record["schema_version"] == 1 and record["latency_ms"] > 0


def test_served_model_is_the_registry_champion_and_says_which_provider_runs_it(server, built_project):
    url, log, _ = server
    settings = load_settings(built_project, environ={})
    current = champion(settings.registry.model_name, settings)
    meta = httpx.get(f"{url}/model/metadata", timeout=10).json()
    assert meta["model_version"] == str(current.version) and meta["input_contract"] == "raw"
    assert meta["data_sha256"] == current.tags["mlops_nb.data_sha256"]
    assert meta["provider"] == "CPUExecutionProvider" and meta["n_features"] == 64
    body = predict(url, [ROW]).json()
    assert body["model_version"] == str(current.version) and body["model_name"] == settings.registry.model_name
    assert f"version {current.version} on CPUExecutionProvider" in log.read_text()


def test_health_readiness_and_the_projects_prometheus_metrics(server):
    url, _, _ = server
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    predict(url, [[1.0] * 64])
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'mlops_nb_requests_total{route="/predict",status="200"}' in metrics
    assert 'mlops_nb_model_info{' in metrics and 'provider="CPUExecutionProvider"' in metrics
    assert "mlops_nb_prediction_log_dropped_total 0.0" in metrics


@pytest.mark.parametrize("body, field, reason", [
    ({"instances": [[0.0] * 63]}, "instances[0]", "has 63 values; expected 64"),
    ({"instances": [ROW, [0.0] * 65]}, "instances[1]", "has 65 values; expected 64"),
    ({"instances": [[["x"]] + ROW[1:]]}, "instances[0][0]", "must be a number, got list"),
    ({"instances": [["abc"] + ROW[1:]]}, "instances[0][0]", "must be a number, got str 'abc'"),
    ({"instances": [["1"] + ROW[1:]]}, "instances[0][0]", "must be a number, got str '1'"),
    ({"instances": [[True] + ROW[1:]]}, "instances[0][0]", "must be a number, got bool True"),
    ({"instances": [[None] + ROW[1:]]}, "instances[0][0]", "must be a number, got NoneType"),
    ({"instances": [[-1.0] + ROW[1:]]}, "instances[0][0]", "-1.0 is outside the allowed range [0.0, 16.0]"),
    ({"instances": [ROW[1:] + [16.5]]}, "instances[0][63]", "16.5 is outside the allowed range [0.0, 16.0]"),
    ({"instances": []}, "instances", "holds 0 rows; send 1 to 1024"),
    ({"instances": [ROW] * 1025}, "instances", "holds 1025 rows; send 1 to 1024"),
    ({"instances": ROW}, "instances[0]", "must be a list of 64 numbers"),
    ({"instances": "1,2,3"}, "instances", "must be a list of rows, got str"),
    ({"rows": [ROW]}, "rows", "unknown field"),
    ({}, "instances", "required"),
    ([ROW], "(body)", "must be a JSON object"),
])
@pytest.mark.parametrize("route", ["/predict", "/explain"])
def test_bad_input_gets_a_400_naming_the_field(server, body, field, reason, route):
    url, _, _ = server
    response = httpx.post(f"{url}{route}", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["error"] == "invalid_input" and error["errors"][0]["field"] == field
    assert reason in error["errors"][0]["reason"] and f"{field}: {reason}" in error["message"]


@pytest.mark.parametrize("raw, headers, status, expected", [
    (b'{"instances": [[NaN' + b", 0" * 63 + b"]]}", {}, 400, "not valid JSON"),
    (b'{"instances": [[1e400' + b", 0" * 63 + b"]]}", {}, 400, "not valid JSON"),
    (b'{"instances": [[0, 0', {}, 400, "not valid JSON"),
    (b"", {}, 400, "not valid JSON"),
    (b'{"instances": [[0]]}', {"content-type": "text/csv"}, 415, "send the body as application/json"),
    (b"[" + b"0," * 3_000_000 + b"0]", {}, 413, "larger than 4194304 bytes ([serving] max_body_bytes)"),
])
@pytest.mark.parametrize("route", ["/predict", "/explain"])
def test_malformed_wrong_type_and_oversized_bodies_get_a_4xx_with_the_reason(server, raw, headers, status, expected,
                                                                              route):
    url, _, _ = server
    response = httpx.post(f"{url}{route}", content=raw, headers={"content-type": "application/json", **headers},
                          timeout=30)
    assert response.status_code == status, response.text
    assert expected in response.json()["message"]


def test_occlusion_gives_a_linear_models_known_attributions_in_chunks():
    weights = np.array([[1.0, -1.0], [0.0, 0.0], [-2.0, 2.0]], dtype=np.float32)  # feature 1 carries nothing

    def score(rows):  # two classes, probabilities linear in the features (no softmax: exact)
        return 0.5 + rows @ weights / 10

    rows = np.array([[2.0, 5.0, 0.0], [0.0, 3.0, 1.0]], dtype=np.float32)  # class 0 (0.7), class 1 (0.7)
    probabilities, attributions = occlusion(score, rows, np.zeros(3, dtype=np.float32))
    assert probabilities.argmax(1).tolist() == [0, 1]
    assert np.allclose(attributions, [[0.2, 0.0, 0.0], [0.0, 0.0, 0.2]], atol=1e-6)  # a feature at 0 or unused: 0
    chunked = occlusion(score, np.repeat(rows, 3000, axis=0), np.zeros(3, np.float32))[1]  # several calls
    assert np.array_equal(chunked[::3000], attributions)


def test_explain_attributes_each_answer_as_the_in_process_occlusion_does(server, built_project, bento_model,
                                                                          test_split):
    url, _, _ = server
    card, session = bento_model
    rows = test_split[0][:50]
    response = httpx.post(f"{url}/explain", json={"instances": rows.tolist()}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    served = np.array([p["attributions"] for p in body["predictions"]])
    _, expected = occlusion(lambda x: onnx_predict(session, x), rows, np.float32(card["feature_mean"]))
    assert body["features"] == card["features"] and served.shape == (50, 64)
    assert np.abs(served - expected).max() <= 1e-6
    labels = [p["label"] for p in predict(url, rows.tolist()).json()["predictions"]]
    assert [p["label"] for p in body["predictions"]] == labels
    profile = read_json(built_project / "products/validate/report.json")["profile"]["features"]
    constant = [i for i, name in enumerate(card["features"]) if profile[name]["std"] == 0]
    assert constant and np.all(served[:, constant] == 0)  # constant in training (digits' corner pixels): 0
    print(json.dumps({**body, "predictions": body["predictions"][:1]})[:1500])


def test_other_methods_get_405(server):
    url, _, _ = server
    response = httpx.get(f"{url}/predict", timeout=10)
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_concurrent_requests_are_all_answered_correctly(server, bento_model, test_split):
    url, _, _ = server
    rows = test_split[0][:64]

    async def send_all():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32)) as client:
            return await asyncio.gather(*(client.post(f"{url}/predict", json={"instances": [row]})
                                          for row in rows.tolist()))

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * len(rows)
    expected = onnx_predict(bento_model[1], rows).argmax(1)
    assert [r.json()["predictions"][0]["label"] for r in responses] == expected.tolist()


def test_bentomls_own_client_works_against_the_bento(server, test_split):
    url, _, _ = server
    with bentoml.SyncHTTPClient(url) as client:
        body = client.predict(instances=test_split[0][:2].tolist())
    assert len(body["predictions"]) == 2 and body["model_name"]


def test_bentoml_serve_from_the_project_folder_serves_the_same_champion(built_project, test_split):
    features, labels = test_split
    with served("", cwd=built_project, env=project_env(built_project)) as url:
        meta = httpx.get(f"{url}/model/metadata", timeout=10).json()
        body = predict(url, features[:20].tolist()).json()
    settings = load_settings(built_project, environ={})
    assert meta["model_version"] == str(champion(settings.registry.model_name, settings).version)
    assert sum(p["label"] == y for p, y in zip(body["predictions"], labels[:20])) >= 18


def test_an_api_key_is_required_when_set_and_compared_for_the_exact_value(built_project, tmp_path):
    env = project_env(built_project, MLOPS_NB_SERVING_API_KEY_ENV="SERVING_API_KEY", SERVING_API_KEY="s3cret-key",
                      MLOPS_NB_MONITORING_PREDICTION_LOG=str(tmp_path / "p.jsonl"))
    with served(bento_tag(built_project), cwd=built_project, env=env) as url:
        assert predict(url, [ROW]).status_code == 401
        wrong = predict(url, [ROW], headers={"authorization": "Bearer s3cret-kez"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert "API key" in wrong.json()["message"]
        assert httpx.get(f"{url}/model/metadata", timeout=10).status_code == 401
        assert httpx.post(f"{url}/explain", json={"instances": [ROW]}, timeout=10).status_code == 401
        assert predict(url, [ROW], headers={"authorization": "Bearer s3cret-key"}).status_code == 200
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        spec = httpx.get(f"{url}/docs.json", timeout=10).json()
        assert spec["paths"]["/predict"]["post"]["security"] == spec["paths"]["/explain"]["post"]["security"] == [
            {"apiKey": []}]


def test_an_unwritable_prediction_log_drops_records_never_requests(built_project, tmp_path):
    (tmp_path / "a-file").write_text("")
    log = tmp_path / "serve.log"
    env = project_env(built_project, MLOPS_NB_MONITORING_PREDICTION_LOG=str(tmp_path / "a-file/predictions.jsonl"))
    with served(bento_tag(built_project), cwd=built_project, env=env, log=log) as url:
        assert [predict(url, [ROW]).status_code for _ in range(20)] == [200] * 20
        metrics = ""
        for _ in range(100):
            metrics = httpx.get(f"{url}/metrics", timeout=10).text
            if "mlops_nb_prediction_log_dropped_total 20.0" in metrics:
                break
            time.sleep(0.05)
        assert "mlops_nb_prediction_log_dropped_total 20.0" in metrics
    assert log.read_text().count("dropping records because writing failed") == 1


SCHEMATHESIS_CONFIG = """
[checks]
enabled = true  # every check

# an Open Inference Protocol tensor's shape must match its data, which JSON Schema cannot say: a request valid by
# the schema may be refused, so that one check is off for these operations
[[operations]]
include-path-regex = "/infer$"
checks.positive_data_acceptance.enabled = false
"""


def test_schemathesis_finds_no_contract_failure_in_the_served_bento(server, tmp_path):
    url, _, _ = server
    (tmp_path / "schemathesis.toml").write_text(SCHEMATHESIS_CONFIG)
    result = subprocess.run(
        [str(BIN / "schemathesis"), "run", f"{url}/docs.json", "--max-examples", "100", "--max-failures", "5",
         "--request-timeout", "20", "--suppress-health-check", "all", "--no-color", "--generation-database", "none"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=project_env(tmp_path))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_the_gpu_bento_variant_builds_with_the_cuda_runtime_and_device_cuda(built_project):
    out = subprocess.run([str(BIN / "mlops-nb"), "deploy", "--gpu"], cwd=built_project, env=project_env(built_project),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    tag = json.loads(out.stdout)["bento_tag"]
    name, version = tag.split(":")
    config = yaml.safe_load((built_project / ".bentoml/bentos" / name / version / "bento.yaml").read_text())
    assert name == "digits_service-gpu" and config["labels"]["runtime"] == "cuda"
    assert "onnxruntime-gpu[cuda,cudnn]==1.31.1" in config["python"]["packages"]
    assert not [p for p in config["python"]["packages"] if p.startswith("onnxruntime==")]
    assert config["docker"]["cuda_version"] == "12.8.1"
    assert {e["name"]: e["value"] for e in config["envs"]}["MLOPS_NB_SERVING_DEVICE"] == "cuda"


def bento_folder(root: Path, tag: str) -> Path:
    return root / ".bentoml/bentos" / tag.replace(":", "/")


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_the_container_images_dockerfiles(built_project, variant):
    """What `bentoml containerize` would build (Docker is not on this machine): the base image, the ONNX runtime
    and no torch, a non-root user, a health check on /readyz."""
    tag = bento_tag(built_project)
    if variant == "gpu":
        out = subprocess.run([str(BIN / "mlops-nb"), "deploy", "--gpu"], cwd=built_project, capture_output=True,
                             text=True, env=project_env(built_project), timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        tag = json.loads(out.stdout)["bento_tag"]
    folder = bento_folder(built_project, tag)
    dockerfile = (folder / "env/docker/Dockerfile").read_text()
    requirements = (folder / "env/python/requirements.txt").read_text().splitlines()
    base = "FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu" if variant == "gpu" else "FROM python:3.11-slim"
    assert [line for line in dockerfile.splitlines() if line.startswith("FROM ")][0].startswith(base), dockerfile
    runtime = "onnxruntime-gpu[cuda,cudnn]==1.31.1" if variant == "gpu" else "onnxruntime==1.32.0"
    assert runtime in requirements and not [r for r in requirements if r.split("=")[0].strip() == "torch"]
    user = [line for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert user and user[-1] == "USER bentoml", user
    healthcheck = [line for line in dockerfile.splitlines() if line.startswith("HEALTHCHECK ")]
    assert len(healthcheck) == 1 and "/readyz" in dockerfile.split("HEALTHCHECK ", 1)[1], dockerfile[-800:]
