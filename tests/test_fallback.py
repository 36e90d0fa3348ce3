"""Fallback when the model fails: faulty ONNX graphs (one that raises, one that answers NaN, one that runs past the
budget) scored by the real ScoringCore behind the HTTP front, then injected into the real served bento."""

import asyncio
import json
import shutil
import subprocess

import httpx
import numpy as np
import onnx
import pytest
from conftest import BIN, graph, project_env, register, run_build, tiny_core
from prometheus_client.parser import text_string_to_metric_families

from mlops_nb.contracts import CARD_FILE, FALLBACK_FOLDER, METRICS, PredictionRecord
from mlops_nb.monitoring import read_prediction_log
from mlops_nb.products import file_sha256
from mlops_nb.serving.batching import Batcher
from mlops_nb.serving.fallback import Fallback, ModelFailed, _finite
from mlops_nb.serving.http import Endpoint
from mlops_nb.serving.prediction_log import PredictionLogWriter
from mlops_nb.serving.scoring import ScoringCore
from mlops_nb.settings import ServingSettings

FAULTS = {"error": "error", "nonfinite": "nonfinite", "slow": "timeout"}  # graph -> the reason it is answered for
# ---- tier 1: the real ScoringCore on tiny ONNX files, behind the real HTTP front (in process, ASGI)

ROWS = [[0.9, 0.1, 0.2, 0.3], [0.1, 0.8, 0.0, 0.2], [0.0, 0.1, 0.7, 0.9], [0.5, 0.0, 0.1, 0.6]]
PREVIOUS_WEIGHTS = np.eye(4, 3)[::-1]  # the previous champion answers other labels than the routed good graph


@pytest.fixture(scope="module")
def previous(tmp_path_factory):
    return tiny_core(tmp_path_factory.mktemp("previous") / "model", "good", "1", weights=PREVIOUS_WEIGHTS)


def front(tmp_path, routed: ScoringCore, backup, *, fallback="previous_champion", budget_ms=0.0, batching=False):
    """The HTTP front as a served worker has it: the routed core, a Fallback, a real prediction-log writer."""
    settings = ServingSettings(fallback=fallback, fallback_budget_ms=budget_ms)
    endpoint = Endpoint(None, settings)
    outcomes = []
    endpoint.log = PredictionLogWriter(tmp_path / "predictions.jsonl")
    endpoint.fallback = Fallback(backup, budget_ms=budget_ms, log=endpoint.log,
                                 on_outcome=lambda reason, outcome: outcomes.append((reason, outcome)))
    if batching:
        endpoint.batcher = Batcher(routed.score, max_batch_size=64, max_latency_ms=1)
    endpoint.core = routed
    return endpoint, outcomes


def ask(endpoint, method="POST", path="/predict", rows=ROWS) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=endpoint), base_url="http://front") as client:
            return await client.request(method, path, **({"json": {"instances": rows}} if method == "POST" else {}),
                                        headers={"x-subject": "client-7"})
    return asyncio.run(go())


def logged(endpoint) -> list[dict]:
    endpoint.log.close()
    records = read_prediction_log(endpoint.log.path)
    for record in records:
        PredictionRecord.model_validate(record)
    return records


def labels_of(core: ScoringCore, rows=ROWS) -> list:
    return core.classes[core.score(np.asarray(rows, np.float32)).argmax(axis=1)].tolist()


@pytest.mark.parametrize("kind", FAULTS)
def test_each_fault_is_answered_by_the_previous_champion_and_the_response_says_so(tmp_path, previous, kind):
    routed = tiny_core(tmp_path / "routed", kind, "2")
    endpoint, outcomes = front(tmp_path, routed, previous, budget_ms=50 if kind == "slow" else 0)
    answer = ask(endpoint)
    reason = FAULTS[kind]
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-fallback"] == f"{reason}; failed-version=2; answered-by=1"
    body = answer.json()
    assert body["model_version"] == "1" and body["fallback"] == {"reason": reason, "failed_version": "2",
                                                                 "answered_by": "1"}
    assert [p["label"] for p in body["predictions"]] == labels_of(previous) != labels_of(tiny_core(
        tmp_path / "good", "good", "2"))
    assert outcomes == [(reason, "answered")]
    [record] = logged(endpoint)
    assert (record["role"], record["model_version"], record["fallback_reason"], record["failed_version"],
            record["subject"], record["request_id"]) == ("fallback", "1", reason, "2", "client-7", body["request_id"])
    assert record["labels"] == labels_of(previous) and record["inputs"] == ROWS


@pytest.mark.parametrize("kind", FAULTS)
def test_with_fallback_error_each_fault_is_a_503_naming_the_reason(tmp_path, kind):
    routed = tiny_core(tmp_path / "routed", kind, "2")
    endpoint, outcomes = front(tmp_path, routed, None, fallback="error", budget_ms=50 if kind == "slow" else 0)
    answer = ask(endpoint)
    reason = FAULTS[kind]
    assert answer.status_code == 503 and "x-fallback" not in answer.headers
    body = answer.json()
    assert (body["error"], body["reason"], body["failed_version"]) == ("model_failed", reason, "2")
    assert "[serving] fallback = error" in body["message"] and body["request_id"] == answer.headers["x-request-id"]
    assert outcomes == [(reason, "refused")]
    [record] = logged(endpoint)
    assert (record["role"], record["model_version"], record["fallback_reason"], record["labels"]) == (
        "fallback", "2", reason, [])


def test_a_previous_champion_that_fails_too_leaves_a_503(tmp_path):
    endpoint, outcomes = front(tmp_path, tiny_core(tmp_path / "routed", "error", "2"),
                               tiny_core(tmp_path / "previous", "nonfinite", "1"))
    answer = ask(endpoint)
    assert answer.status_code == 503 and answer.json()["reason"] == "error"
    assert "the previous champion failed too" in answer.json()["message"]
    assert outcomes == [("error", "refused")]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_one_non_finite_value_anywhere_is_caught(bad):
    for row, column in np.ndindex(3, 4):
        probabilities = np.full((3, 4), 0.25, np.float32)
        probabilities[row, column] = bad
        with pytest.raises(ModelFailed, match="nonfinite"):
            _finite(probabilities)
    assert _finite(probabilities := np.full((3, 4), 0.25, np.float32)) is probabilities


@pytest.mark.parametrize("budget_ms, batching", [(0, False), (60_000, False), (0, True), (60_000, True)])
def test_a_healthy_model_answers_itself_inline_in_a_thread_or_batched(tmp_path, previous, budget_ms, batching):
    routed = tiny_core(tmp_path / "routed", "good", "2")
    endpoint, outcomes = front(tmp_path, routed, previous, budget_ms=budget_ms, batching=batching)
    answer = ask(endpoint)
    assert answer.status_code == 200 and "x-fallback" not in answer.headers and "fallback" not in answer.json()
    assert [p["label"] for p in answer.json()["predictions"]] == labels_of(routed)
    assert outcomes == []
    [record] = logged(endpoint)
    assert (record["role"], record["model_version"], record.get("fallback_reason")) == ("champion", "2", None)


def test_the_batcher_path_falls_back_too(tmp_path, previous):
    endpoint, outcomes = front(tmp_path, tiny_core(tmp_path / "routed", "nonfinite", "2"), previous, batching=True)
    answer = ask(endpoint)
    assert answer.status_code == 200 and answer.headers["x-fallback"].startswith("nonfinite;")
    assert outcomes == [("nonfinite", "answered")]


@pytest.mark.parametrize("backup, policy", [(True, "previous_champion"), (False, "error")])
def test_metadata_shows_the_fallback_policy_in_effect_and_its_version(tmp_path, previous, backup, policy):
    endpoint, _ = front(tmp_path, tiny_core(tmp_path / "routed", "good", "2"), previous if backup else None,
                        budget_ms=250)
    assert ask(endpoint, "GET", "/model/metadata").json()["fallback"] == {
        "policy": policy, "configured": "previous_champion", "model_version": "1" if backup else None,
        "budget_ms": 250}


@pytest.mark.engines  # two registrations and a dozen registry calls: minutes on a loaded machine
def test_deploy_bundles_the_previous_champion_and_refuses_one_with_other_classes(registry, caplog):
    from mlops_nb.registry import RegistryError
    from mlops_nb.serving.bento import fallback_version, import_version

    settings, onnx_path = registry
    settings = settings.model_copy(update={"serving": settings.serving.model_copy(
        update={"fallback": "previous_champion"})})
    sha = file_sha256(onnx_path)
    assert register(settings, onnx_path, 0.95, onnx_sha256=sha)[1].passed  # v1: champion
    assert fallback_version("champion", settings) is None
    assert "no previous champion other than the served version 1" in caplog.text
    assert register(settings, onnx_path, 0.97, onnx_sha256=sha, classes=["x", "y", "w"])[1].passed  # champion 1 -> 2
    assert fallback_version("champion", settings) == fallback_version("2", settings) == "1"
    assert fallback_version("1", settings) is None  # serving the previous champion itself: nothing to fall back to
    with pytest.raises(RegistryError, match="the previous champion v1 differs from v2 in classes: a fallback must"):
        import_version("champion", settings, fallback="1")
    errored = settings.model_copy(update={"serving": settings.serving.model_copy(update={"fallback": "error"})})
    assert fallback_version("champion", errored) is None


# ---- engines: each fault injected into the served bento (`bentoml serve` of the deployed bento)

BUDGET_MS = 200
SLOW_STEPS = 150  # about 10x the budget on an idle 2-core machine (more when loaded: still a timeout)


@pytest.fixture(scope="module")
def deployed(built_project):
    """The session's build registered once more (the same weights: the champion moves to a new version, the old one
    is the previous champion), deployed with fallback = previous_champion."""
    root = built_project
    run_build(root)
    run_build(root, "--force", "--partially", "register")
    env = project_env(root, MLOPS_NB_SERVING_FALLBACK="previous_champion")
    result = subprocess.run([str(BIN / "mlops-nb"), "deploy"], cwd=root, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["fallback_version"] not in (None, out["model_version"])
    return root, out


def faulty_home(root, model_tag: str, kind: str, dest):
    """A copy of the project's BentoML home whose served model is the `kind` fault graph; returns (home,
    the bundled previous champion's folder)."""
    home = dest / f"bentoml-{kind}"
    shutil.copytree(root / ".bentoml", home)
    model = home / "models" / model_tag.replace(":", "/")
    real = onnx.load(model / "model.onnx").graph
    features = real.input[0].type.tensor_type.shape.dim[1].dim_value
    classes = real.output[0].type.tensor_type.shape.dim[1].dim_value
    onnx.save(graph(kind, features, classes, input_name=real.input[0].name, output_name=real.output[0].name,
                    slow_steps=SLOW_STEPS), model / "model.onnx")
    return home, model / FALLBACK_FOLDER


def fallback_counts(url) -> dict:
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text)
    return {(s.labels["reason"], s.labels["outcome"]): s.value for family in families for s in family.samples
            if s.name == METRICS["fallback"]}


def serve_fault(deployed, tmp_path, kind, **settings):
    from mlops_nb.serving.bento import served

    root, out = deployed
    home, previous = faulty_home(root, out["model_tag"], kind, tmp_path)
    log = tmp_path / "predictions.jsonl"
    env = project_env(root, BENTOML_HOME=str(home), MLOPS_NB_MONITORING_PREDICTION_LOG=str(log), **settings)
    return served(out["bento_tag"], cwd=root, env=env, log=tmp_path / "serve.log"), previous, log


@pytest.mark.engines
@pytest.mark.parametrize("kind", FAULTS)
def test_the_served_bento_answers_a_failed_call_with_the_previous_champion(deployed, tmp_path, kind):
    from mlops_nb.onnx_export import onnx_predict, ort_session

    server, previous, log = serve_fault(deployed, tmp_path, kind, MLOPS_NB_SERVING_FALLBACK="previous_champion",
                                        MLOPS_NB_SERVING_FALLBACK_BUDGET_MS=str(BUDGET_MS if kind == "slow" else 0))
    card = json.loads((previous / CARD_FILE).read_text())
    low, high, width = card["feature_min"], card["feature_max"], len(card["features"])
    rows = np.random.default_rng(0).integers(low, high + 1, (3, 5, width)).astype(np.float32)
    session = ort_session(previous / "model.onnx")  # the previous champion's answers for the same rows
    expected = [np.asarray(card["classes"])[onnx_predict(session, r).argmax(axis=1)] for r in rows]
    reason, served, backup = FAULTS[kind], deployed[1]["model_version"], deployed[1]["fallback_version"]
    with server as url:
        meta = httpx.get(f"{url}/model/metadata", timeout=30).json()
        answers = [httpx.post(f"{url}/predict", json={"instances": r.tolist()}, timeout=60) for r in rows]
        counts = fallback_counts(url)
    print(answers[0].status_code, dict(answers[0].headers), answers[0].text)  # quoted in reports (pytest -s)
    assert meta["model_version"] == served and meta["fallback"]["model_version"] == backup
    for answer, labels in zip(answers, expected):
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-fallback"] == f"{reason}; failed-version={served}; answered-by={backup}"
        assert [p["label"] for p in answer.json()["predictions"]] == labels.tolist()
    assert counts == {(reason, "answered"): 3.0}
    records = read_prediction_log(log)
    assert [(r["role"], r["model_version"], r["fallback_reason"], r["failed_version"]) for r in records] == [
        ("fallback", backup, reason, served)] * 3


@pytest.mark.engines
def test_the_served_bento_with_fallback_error_answers_503_with_the_reason(deployed, tmp_path):
    server, _, log = serve_fault(deployed, tmp_path, "nonfinite", MLOPS_NB_SERVING_FALLBACK="error")
    with server as url:
        meta = httpx.get(f"{url}/model/metadata", timeout=30).json()
        answer = httpx.post(f"{url}/predict", json={"instances": [[0.0] * meta["n_features"]]}, timeout=60)
        counts = fallback_counts(url)
    print(answer.status_code, dict(answer.headers), answer.text)  # quoted in the report (pytest -s)
    assert meta["fallback"]["policy"] == "error"
    assert answer.status_code == 503 and answer.headers["content-type"] == "application/json"
    served = deployed[1]["model_version"]
    assert (answer.json()["error"], answer.json()["reason"], answer.json()["failed_version"]) == (
        "model_failed", "nonfinite", served)
    assert counts == {("nonfinite", "refused"): 1.0}
    [record] = read_prediction_log(log)
    assert (record["role"], record["model_version"], record["fallback_reason"]) == ("fallback", served, "nonfinite")
