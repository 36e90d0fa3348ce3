"""MLflow's scoring protocol and the Open Inference Protocol v2: codecs over the one scoring path, checked in process
on the real ScoringCore (a tiny ONNX graph) behind the real HTTP front; tests/test_service.py drives the served bento
with MLflow's and Triton's own clients and `mlflow models serve` itself."""

import asyncio
import json
import struct
import subprocess
from pathlib import Path

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
from conftest import BIN, CLASSES, engine_python, project_env, running, tiny_core

from mlops_nb.monitoring import read_prediction_log
from mlops_nb.serving.bento import free_port
from mlops_nb.serving.fallback import Fallback
from mlops_nb.serving.http import Endpoint
from mlops_nb.serving.metrics import ServingMetrics
from mlops_nb.serving.prediction_log import PredictionLogWriter
from mlops_nb.settings import ServingSettings, load_settings

ROWS = [[0.9, 0.1, 0.2, 0.3], [0.1, 0.8, 0.0, 0.2], [0.0, 0.1, 0.7, 0.9]]
FEATURES = ["a", "b", "c", "d"]
INFER = "/v2/models/fb-test/infer"
V2_INPUT = {"name": "x", "datatype": "FP32", "shape": [3, 4]}


@pytest.fixture
def endpoint(tmp_path):
    """The front as a served worker has it: one core (version 1), a Fallback without a backup, a real log writer."""
    front = Endpoint(None, ServingSettings())
    front.core = tiny_core(tmp_path / "model", "good", "1")
    front.log = PredictionLogWriter(tmp_path / "predictions.jsonl")
    front.fallback = Fallback(None, log=front.log)
    return front


def call(endpoint, method: str, path: str, body: bytes | None = None, **headers) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=endpoint), base_url="http://front") as client:
            return await client.request(method, path, content=body, headers=headers)
    return asyncio.run(go())


def post_json(endpoint, path: str, payload, **headers) -> httpx.Response:
    return call(endpoint, "POST", path, orjson.dumps(payload), **{"content-type": "application/json", **headers})


def expected(endpoint, rows=ROWS) -> np.ndarray:
    return endpoint.core.score(np.asarray(rows, np.float32))


CSV = "a,b,c,d\n" + "\n".join(",".join(map(str, row)) for row in ROWS) + "\n"
MLFLOW_BODIES = {
    "instances": {"instances": ROWS},
    "inputs": {"inputs": ROWS},
    "dataframe_split": {"dataframe_split": {"columns": FEATURES, "data": ROWS}},
    "dataframe_split, unnamed columns, with an index": {"dataframe_split": {"columns": ["0", "1", "2", "3"],
                                                                            "index": [0, 1, 2], "data": ROWS}},
    "dataframe_records": {"dataframe_records": [dict(zip(FEATURES, row)) for row in ROWS]},
    "dataframe_records, keys in another order (taken by name)": {"dataframe_records": [
        dict(reversed(list(zip(FEATURES, row)))) for row in ROWS]},
    "instances with params (ignored, as MLflow ignores them)": {"instances": ROWS, "params": {"k": 1}},
}


@pytest.mark.parametrize("name", MLFLOW_BODIES)
def test_every_mlflow_json_format_answers_mlflows_shape_with_the_models_probabilities(endpoint, name):
    answer = post_json(endpoint, "/invocations", MLFLOW_BODIES[name])
    assert answer.status_code == 200, answer.text
    assert list(answer.json()) == ["predictions"] and list(answer.json()["predictions"]) == ["y"]
    assert np.array_equal(np.asarray(answer.json()["predictions"]["y"], np.float32), expected(endpoint))


def test_csv_with_a_header_line_answers_as_json_does(endpoint):
    answer = call(endpoint, "POST", "/invocations", CSV.encode(), **{"content-type": "text/csv; charset=utf-8"})
    assert answer.status_code == 200, answer.text
    assert answer.content == post_json(endpoint, "/invocations", {"instances": ROWS}).content


def test_mlflows_numbers_are_written_as_doubles_of_the_float32_values(endpoint):
    """MLflow writes each float32 as the double it is: the same text, so a client sees the same numbers."""
    answer = post_json(endpoint, "/invocations", {"instances": ROWS[:1]})
    written = answer.content.split(b"[[")[1].split(b",")[0]
    assert written == repr(float(expected(endpoint, ROWS[:1])[0, 0])).encode()


@pytest.mark.parametrize("body, content_type, status, words", [
    (b'{"foo": [[0, 0, 0, 0]]}', "application/json", 400, "exactly one of dataframe_split"),
    (b'{"instances": [[0, 0, 0, 0]], "inputs": [[0, 0, 0, 0]]}', "application/json", 400, "exactly one of"),
    (b'[[0, 0, 0, 0]]', "application/json", 400, "exactly one of"),
    (b'{bad', "application/json", 400, "not valid JSON"),
    (b'{"instances": [[0, 0, 0, 0]]}', "text/plain", 415, "application/json"),
    (b'{"instances": [[0, 0, 0, 0]]}', "application/json; charset=latin-1", 415, "charset=utf-8"),
    (b'{"instances": [[0, 0, 0, 2]]}', "application/json", 400, "instances[0][3]: 2.0 is outside"),
    (b'{"inputs": {"x": [[0, 0, 0, 0]]}}', "application/json", 400, "inputs: must be a list of rows"),
    (b'{"instances": [[0, 0, 0]]}', "application/json", 400, "instances[0]: has 3 values"),
    (b'{"dataframe_split": {"columns": ["d", "c", "b", "a"], "data": [[0, 0, 0, 0]]}}', "application/json", 400,
     "another order; send them in this order: a, b, c, d"),
    (b'{"dataframe_split": {"data": [[0, "0", 0, 0]]}}', "application/json", 400,
     "dataframe_split.data[0][1]: must be a number, got str"),
    (b'{"dataframe_records": [{"a": 0, "b": 0, "c": 0, "d": 0}, {"a": 0}]}', "application/json", 400,
     "dataframe_records[1]: has columns"),
    (b"a,b,c,d\n0,0,x,0\n", "text/csv", 400, "csv rows[0][2]: must be a number, got str 'x'"),
    (b"a,b,c,d\n0,,0,0\n", "text/csv", 400, "csv rows[0][1]: must be a number, got str ''"),
    (b"", "text/csv", 400, "the CSV is empty"),
])
def test_malformed_mlflow_requests_get_a_4xx_in_mlflows_error_shape_naming_the_field(endpoint, body, content_type,
                                                                                    status, words):
    answer = call(endpoint, "POST", "/invocations", body, **{"content-type": content_type})
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert error["error_code"] == "BAD_REQUEST" and words in error["message"], error
    assert error["request_id"] == answer.headers["x-request-id"]


def test_ping_health_and_version_as_mlflows_server_has_them(endpoint):
    for path in ("/ping", "/health"):
        assert (call(endpoint, "GET", path).status_code, call(endpoint, "GET", path).text) == (200, "\n")
    version = call(endpoint, "GET", "/version")
    assert (version.status_code, version.text, version.headers["content-type"]) == (200, "fb-test/1", "text/plain")
    endpoint.core = None
    assert call(endpoint, "GET", "/ping").status_code == 503
    assert call(endpoint, "POST", "/invocations", b"{}").json()["error_code"] == "TEMPORARILY_UNAVAILABLE"


def test_v2_health_server_and_model_metadata(endpoint):
    assert call(endpoint, "GET", "/v2/health/live").json() == {"live": True}
    assert call(endpoint, "GET", "/v2/health/ready").json() == {"ready": True}
    assert call(endpoint, "GET", "/v2").json()["extensions"] == ["binary_tensor_data"]
    metadata = call(endpoint, "GET", "/v2/models/fb-test").json()
    assert metadata == call(endpoint, "GET", "/v2/models/fb-test/versions/1").json()
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]},
                                   {"name": "label", "datatype": "BYTES", "shape": [-1]}]
    assert call(endpoint, "GET", "/v2/models/fb-test/ready").json() == {"name": "fb-test", "ready": True}
    for path in ("/v2/models/other", "/v2/models/fb-test/versions/9/ready", "/v2/models/other/infer"):
        answer = call(endpoint, "GET" if "infer" not in path else "POST", path, b"{}")
        assert answer.status_code == 404 and list(answer.json()) == ["error"], answer.text
    endpoint.core = None
    assert call(endpoint, "GET", "/v2/health/live").status_code == 200
    assert call(endpoint, "GET", "/v2/health/ready").status_code == 503


@pytest.mark.parametrize("data", ["flat", "nested"])
def test_v2_infer_with_json_tensors_answers_probabilities_and_labels(endpoint, data):
    values = sum(ROWS, []) if data == "flat" else ROWS
    answer = post_json(endpoint, INFER, {"id": "req-1", "inputs": [{**V2_INPUT, "data": values}]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("fb-test", "1", "req-1")
    probabilities, labels = body["outputs"]
    assert (probabilities["name"], probabilities["datatype"], probabilities["shape"]) == ("y", "FP32", [3, 3])
    assert np.array_equal(np.asarray(probabilities["data"], np.float32).reshape(3, 3), expected(endpoint))
    assert labels == {"name": "label", "datatype": "BYTES", "shape": [3],
                      "data": [CLASSES[i] for i in expected(endpoint).argmax(axis=1)]}


def test_v2_binary_tensors_in_and_out_as_the_extension_defines_them(endpoint):
    header = orjson.dumps({"inputs": [{**V2_INPUT, "parameters": {"binary_data_size": 48}}],
                           "outputs": [{"name": "label", "parameters": {"binary_data": True}},
                                       {"name": "y", "parameters": {"binary_data": True}}]})
    answer = call(endpoint, "POST", INFER, header + np.asarray(ROWS, "<f4").tobytes(),
                  **{"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))})
    assert answer.status_code == 200, answer.text
    size = int(answer.headers["inference-header-content-length"])
    body, blob = orjson.loads(answer.content[:size]), answer.content[size:]
    label_size = body["outputs"][0]["parameters"]["binary_data_size"]
    labels, probabilities = blob[:label_size], blob[label_size:]
    words = [CLASSES[i].encode() for i in expected(endpoint).argmax(axis=1)]
    assert labels == b"".join(struct.pack("<I", len(w)) + w for w in words)
    assert np.array_equal(np.frombuffer(probabilities, "<f4").reshape(3, 3), expected(endpoint))
    assert [o["name"] for o in body["outputs"]] == ["label", "y"]


@pytest.mark.parametrize("tensor, words", [
    ({**V2_INPUT, "datatype": "FP64", "data": [0] * 12}, "inputs[0].datatype: expected FP32"),
    ({**V2_INPUT, "name": "z", "data": [0] * 12}, "inputs[0].name: expected 'x'"),
    ({**V2_INPUT, "shape": [3, 5], "data": [0] * 15}, "inputs[0].shape: expected [rows, 4]"),
    ({**V2_INPUT, "data": [0] * 11}, "expected 12 values for shape [3, 4]"),
    ({**V2_INPUT, "data": [0] * 11 + [7]}, "x[2][3]: 7.0 is outside the allowed range"),
    ({**V2_INPUT, "data": [0] * 11 + ["0"]}, "x[2][3]: must be a number, got str"),
    ({**V2_INPUT, "data": [0] * 11 + [True]}, "x[2][3]: must be a number, got bool"),
    ({**V2_INPUT, "parameters": {"binary_data_size": 47}}, "binary_data_size: 47"),
])
def test_malformed_v2_requests_get_a_400_in_the_protocols_error_shape_naming_the_field(endpoint, tensor, words):
    answer = post_json(endpoint, INFER, {"inputs": [tensor]})
    assert answer.status_code == 400 and list(answer.json()) == ["error"], answer.text
    assert words in answer.json()["error"]


def test_a_v2_request_may_ask_for_one_output_and_never_for_an_unknown_one(endpoint):
    asked = post_json(endpoint, INFER, {"inputs": [{**V2_INPUT, "data": ROWS}], "outputs": [{"name": "label"}]})
    assert [o["name"] for o in asked.json()["outputs"]] == ["label"]
    unknown = post_json(endpoint, INFER, {"inputs": [{**V2_INPUT, "data": ROWS}], "outputs": [{"name": "z"}]})
    assert unknown.status_code == 400 and "outputs: name some of ['y', 'label']" in unknown.json()["error"]


def test_each_protocol_is_logged_counted_and_keyed_as_predict_is(endpoint):
    endpoint.metrics = ServingMetrics()
    endpoint.scored = {"champion": endpoint.metrics.scored.labels("1", "champion")}
    endpoint.api_key = b"s3cret"
    key = {"authorization": "Bearer s3cret"}
    answers = [post_json(endpoint, "/predict", {"instances": ROWS}, **key),
               post_json(endpoint, "/invocations", {"instances": ROWS}, **key),
               post_json(endpoint, INFER, {"inputs": [{**V2_INPUT, "data": ROWS}]}, **key)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    for path, body in (("/predict", {"instances": ROWS}), ("/invocations", {"instances": ROWS}),
                       (INFER, {"inputs": [{**V2_INPUT, "data": ROWS}]})):
        assert post_json(endpoint, path, body).status_code == 401
    assert [call(endpoint, "GET", path).status_code for path in ("/ping", "/v2/health/ready")] == [200, 200]
    assert call(endpoint, "GET", "/v2/models/fb-test").status_code == 401
    endpoint.log.close()
    records = read_prediction_log(endpoint.log.path)
    assert [r["request_id"] for r in records] == [a.headers["x-request-id"] for a in answers]
    assert {tuple(r["labels"]) for r in records} == {tuple(CLASSES[i] for i in expected(endpoint).argmax(axis=1))}
    paths = {s.labels["route"] for m in endpoint.metrics.requests.collect() for s in m.samples}
    assert paths == {"/predict", "/invocations", "/v2/models/{name}/infer", "/ping", "/v2/health/ready",
                     "/v2/models/{name}"}


def test_a_failed_model_is_answered_by_the_previous_champion_on_every_protocol(endpoint, tmp_path):
    previous = tiny_core(tmp_path / "previous", "good", "1", weights=np.eye(4, 3)[::-1])
    endpoint.core = tiny_core(tmp_path / "routed", "nonfinite", "2")
    endpoint.fallback = Fallback(previous, log=endpoint.log)
    for path, body in (("/invocations", {"instances": ROWS}), (INFER, {"inputs": [{**V2_INPUT, "data": ROWS}]})):
        answer = post_json(endpoint, path, body)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-fallback"] == "nonfinite; failed-version=2; answered-by=1"
    endpoint.fallback = Fallback(None, log=endpoint.log)
    refused = post_json(endpoint, INFER, {"inputs": [{**V2_INPUT, "data": ROWS}]})
    assert refused.status_code == 503 and "version 2 failed (nonfinite" in refused.json()["error"]
    refused = post_json(endpoint, "/invocations", {"instances": ROWS})
    assert (refused.status_code, refused.json()["error_code"], refused.json()["reason"]) == (
        503, "TEMPORARILY_UNAVAILABLE", "nonfinite")


# ---- the served bento, with each protocol's own client, and `mlflow models serve` of the same version

TRITON_SCRIPT = """
import json, sys
import numpy as np
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

url, name, rows = sys.argv[1], sys.argv[2], np.asarray(json.load(open(sys.argv[3])), np.float32)
client = http.InferenceServerClient(url=url)
meta = client.get_model_metadata(name)
out = {"live": client.is_server_live(), "ready": client.is_server_ready(), "model_ready": client.is_model_ready(name),
       "server": client.get_server_metadata(), "metadata": meta, "unknown_ready": client.is_model_ready("nope")}
for binary in (True, False):
    tensor = http.InferInput(meta["inputs"][0]["name"], list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    result = client.infer(name, [tensor], request_id=f"triton-{binary}",
                          outputs=[http.InferRequestedOutput(o["name"], binary_data=binary) for o in meta["outputs"]])
    out["binary" if binary else "json"] = {"id": result.get_response()["id"], **{
        o["name"]: result.as_numpy(o["name"]).tolist() for o in meta["outputs"]}}
bad = http.InferInput(meta["inputs"][0]["name"], [1, 3], "FP32")
bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
try:
    client.infer(name, [bad])
except InferenceServerException as error:
    out["error"] = [error.status(), error.message()]
print(json.dumps(out))
"""


def served_predict(url: str, rows: np.ndarray) -> dict:
    answer = httpx.post(f"{url}/predict", json={"instances": rows.tolist()}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_mlflows_own_scoring_client_gets_the_served_bentos_answers(server, test_split):
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    url, _, _ = server
    rows = test_split[0][:8]
    metadata = httpx.get(f"{url}/model/metadata", timeout=10).json()
    client = ScoringServerClient("127.0.0.1", int(url.rsplit(":", 1)[1]))
    client.wait_server_ready(timeout=10)
    assert client.get_version() == f"{metadata['model_name']}/{metadata['model_version']}"
    expected = [p["probabilities"] for p in served_predict(url, rows)["predictions"]]
    for data in (pd.DataFrame(rows, columns=metadata["features"]), rows):  # dataframe_split, then inputs
        predictions = client.invoke(data)["predictions"]["probabilities"]
        assert np.array_equal(np.asarray(predictions, np.float32), np.asarray(expected, np.float32))


def test_tritons_own_http_client_gets_metadata_readiness_and_the_served_bentos_answers(server, test_split, tmp_path):
    url, _, _ = server
    rows = test_split[0][:8]
    (tmp_path / "rows.json").write_text(json.dumps(rows.tolist()))
    name = httpx.get(f"{url}/model/metadata", timeout=10).json()["model_name"]
    result = subprocess.run([str(engine_python("triton-client")), "-c", TRITON_SCRIPT, url.split("://")[1], name,
                             str(tmp_path / "rows.json")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert (out["live"], out["ready"], out["model_ready"], out["unknown_ready"]) == (True, True, True, False)
    assert out["metadata"]["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 64]}]
    assert "binary_tensor_data" in out["server"]["extensions"]
    answer = served_predict(url, rows)
    for mode in ("binary", "json"):
        assert out[mode]["id"] == f"triton-{mode == 'binary'}"
        assert out[mode]["label"] == [p["label"] for p in answer["predictions"]]
        assert np.array_equal(np.asarray(out[mode]["probabilities"], np.float32),
                              np.asarray([p["probabilities"] for p in answer["predictions"]], np.float32))
    assert out["error"][0] == "400" and "inputs[0].shape: expected [rows, 64], got [1, 3]" in out["error"][1]


def corpus(rows: np.ndarray, features: list[str]) -> dict[str, tuple[str, bytes]]:
    """Requests to /invocations by name: (content type, body), valid and malformed."""
    one, five = rows[:1].tolist(), rows[:5].tolist()
    dumps = orjson.dumps
    header = ",".join(features)
    return {
        "instances, 1 row": ("application/json", dumps({"instances": one})),
        "instances, 5 rows": ("application/json", dumps({"instances": five})),
        "inputs": ("application/json", dumps({"inputs": five})),
        "dataframe_split, named columns": ("application/json", dumps({"dataframe_split": {"columns": features,
                                                                                          "data": five}})),
        "dataframe_split, no columns, an index": ("application/json", dumps({"dataframe_split": {
            "index": list(range(5)), "data": five}})),
        "dataframe_records": ("application/json", dumps({"dataframe_records": [dict(zip(features, r)) for r in five]})),
        "instances and params": ("application/json", dumps({"instances": five, "params": {"k": 1}})),
        "instances and an unknown key": ("application/json", dumps({"instances": five, "note": "x"})),
        "charset=utf-8": ("application/json; charset=utf-8", dumps({"instances": one})),
        "not JSON": ("application/json", b"{bad"),
        "a JSON list": ("application/json", dumps(five)),
        "no format key": ("application/json", dumps({"rows": five})),
        "two format keys": ("application/json", dumps({"instances": five, "inputs": five})),
        "no rows": ("application/json", dumps({"instances": []})),
        "63 values": ("application/json", dumps({"instances": [one[0][:63]]})),
        "a string value": ("application/json", dumps({"instances": [["a"] * 64]})),
        "inputs as a dict": ("application/json", dumps({"inputs": {"features": five}})),
        "dataframe_split without data": ("application/json", dumps({"dataframe_split": {"columns": features}})),
        "text/plain": ("text/plain", dumps({"instances": one})),
        "charset=latin-1": ("application/json; charset=latin-1", dumps({"instances": one})),
        # DIFFERENCES below
        "out of range": ("application/json", dumps({"instances": [[1e6] * 64]})),
        "NaN": ("application/json", b'{"instances": [[' + b", ".join([b"NaN"] * 64) + b"]]}"),
        "null": ("application/json", dumps({"instances": [[None] * 64]})),
        "booleans": ("application/json", dumps({"instances": [[True] * 64]})),
        "csv": ("text/csv", (header + "\n" + "\n".join(",".join(map(repr, r)) for r in five) + "\n").encode()),
        "records, keys in reverse order": ("application/json", dumps({"dataframe_records": [
            dict(reversed(list(zip(features, r)))) for r in five]})),
    }


# where the bento and `mlflow models serve` answer differently, and why (DECISIONS 4): (mlflow, mlops-nb)
DIFFERENCES = {
    "out of range": ("2xx", "4xx"),  # the model card's bounds: MLflow has none
    "NaN": ("2xx", "4xx"),  # not JSON (Python's json reads it); NaN rows are refused anyway
    "null": ("2xx", "4xx"),  # MLflow scores a null as NaN
    "booleans": ("2xx", "4xx"),  # MLflow scores true as 1.0
    "csv": ("4xx", "2xx"),  # MLflow 3 cannot read CSV into this model's tensor signature; the bento can
    "records, keys in reverse order": ("2xx", "2xx"),  # MLflow scores them by position, the bento by name
}


def test_invocations_match_mlflow_models_serve_of_the_same_version_request_for_request(server, built_project,
                                                                                       test_split, tmp_path):
    url, _, _ = server
    metadata = httpx.get(f"{url}/model/metadata", timeout=10).json()
    settings = load_settings(built_project, environ={})
    port = free_port()
    env = project_env(built_project, MLFLOW_TRACKING_URI=settings.tracking_uri)
    command = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{metadata['model_name']}/"
               f"{metadata['model_version']}", "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    answers = {}
    ping = f"http://127.0.0.1:{port}/ping"
    with running(command, cwd=built_project, env=env, log=tmp_path / "mlflow.log", ready=ping):
        for name, (content_type, body) in corpus(test_split[0], metadata["features"]).items():
            answers[name] = [httpx.post(f"{base}/invocations", content=body, headers={"content-type": content_type},
                                        timeout=60) for base in (f"http://127.0.0.1:{port}", url)]
    report = {name: (f"{theirs.status_code // 100}xx", f"{ours.status_code // 100}xx")
              for name, (theirs, ours) in answers.items()}
    print("\n".join(f"{name}: mlflow {theirs}, mlops-nb {ours}" for name, (theirs, ours) in report.items()))
    assert {name: classes for name, classes in report.items() if len(set(classes)) > 1} == {
        name: classes for name, classes in DIFFERENCES.items() if len(set(classes)) > 1}
    for name, (theirs, ours) in answers.items():
        if ours.status_code >= 400:
            assert "message" in ours.json() and ours.json()["error_code"], (name, ours.text)
        if report[name] == ("2xx", "2xx") and name not in DIFFERENCES:
            assert theirs.json() == ours.json(), name  # the same numbers, written the same way
    reversed_records, in_order = answers["records, keys in reverse order"][1], answers["dataframe_records"][1]
    assert reversed_records.json() == in_order.json() != answers["records, keys in reverse order"][0].json()
    assert answers["csv"][1].json() == answers["instances, 5 rows"][1].json()


def test_readmes_one_curl_per_protocol_gets_the_same_label(server):
    url, _, _ = server
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    [block] = [b for b in readme.split("```bash\n")[1:] if b.startswith("ROW=")]
    script = block.split("```")[0].replace("127.0.0.1:3000", url.split("://")[1])
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script.replace("\ncurl", "\necho; curl")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    predict, invocations, v2 = (json.loads(line) for line in result.stdout.split("\n") if line.strip())
    label = predict["predictions"][0]["label"]
    assert np.argmax(invocations["predictions"]["probabilities"][0]) == label
    assert [o["data"] for o in v2["outputs"] if o["name"] == "label"] == [[label]]
