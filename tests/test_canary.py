"""Canary routing: the Router's share, stickiness and stop file; deploy's refusal; the served bento routing for real."""

import json
import subprocess
import time

import httpx
import orjson
import pytest
from conftest import BIN, REPO, gate_card, project_env, register, run_build

from mlops_nb.serving.canary import CHECK_EVERY_S, Router
from mlops_nb.serving.scoring import ScoringCore

KEYS = [f"customer-{i}".encode() for i in range(20000)]


class Clock:
    """A monotonic clock the test moves by hand (the Router looks at the stop file at most every CHECK_EVERY_S)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def cores(tmp_path_factory):
    """Champion v1 and canary v2: ScoringCores on a one-node ONNX model (softmax over `gate_card`'s 4 features' first
    3), no training needed."""
    import onnx
    from onnx import TensorProto, helper

    folder = tmp_path_factory.mktemp("model")
    nodes = [helper.make_node("Slice", ["x", "start", "end", "axis"], ["first"]),
             helper.make_node("Softmax", ["first"], ["p"], axis=1)]
    constants = [helper.make_tensor(name, TensorProto.INT64, [1], [value])
                 for name, value in (("start", 0), ("end", 3), ("axis", 1))]
    graph = helper.make_graph(nodes, "canary-test", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 3])], constants)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "model.onnx")
    return [ScoringCore(folder, gate_card("run", 0.95, model_version=v)) for v in ("1", "2")]


def within_binomial_bounds(hits: int, n: int, p: float) -> bool:
    """`hits` of `n` draws with probability `p`, within 5 standard deviations (a false failure: ~1 in 3.5 million)."""
    return abs(hits - n * p) <= 5 * (n * p * (1 - p)) ** 0.5


def roles(router: Router, keys) -> list[str]:
    return [router.route(key)[1] for key in keys]


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.5])
def test_the_canary_gets_its_fraction_of_keys_and_each_key_always_the_same_version(cores, tmp_path, fraction):
    router = Router(*cores, fraction, tmp_path / "canary-stop.json")
    first = roles(router, KEYS)
    assert within_binomial_bounds(first.count("canary"), len(KEYS), fraction)
    assert roles(router, KEYS) == first  # sticky: the same key meets the same version again
    other_worker = Router(*cores, fraction, tmp_path / "canary-stop.json")
    assert roles(other_worker, reversed(KEYS)) == first[::-1]  # ... in every worker process, in any order
    core, role = router.route(KEYS[first.index("canary")])
    assert (core.card.model_version, role) == ("2", "canary")
    core, role = router.route(KEYS[first.index("champion")])
    assert (core.card.model_version, role) == ("1", "champion")


def test_a_growing_fraction_keeps_the_keys_already_on_the_canary(cores, tmp_path):
    small = roles(Router(*cores, 0.1, tmp_path / "stop.json"), KEYS)
    large = roles(Router(*cores, 0.4, tmp_path / "stop.json"), KEYS)
    assert all(b == "canary" for a, b in zip(small, large) if a == "canary")


def test_requests_without_a_key_are_drawn_at_random_with_the_fraction(cores, tmp_path):
    draws = [roles(Router(*cores, 0.2, tmp_path / "stop.json", seed=seed), [None] * 20000) for seed in (1, 1, 2)]
    assert within_binomial_bounds(draws[0].count("canary"), 20000, 0.2)
    assert draws[0] == draws[1] != draws[2]  # seedable
    assert set(roles(Router(*cores, 1.0, tmp_path / "stop.json"), [None, b"k"] * 50)) == {"canary"}


def test_the_stop_file_naming_the_canary_sends_everything_to_the_champion_and_counts_one_rollback(cores, tmp_path):
    stop, clock, rollbacks = tmp_path / "canary-stop.json", Clock(), []
    router = Router(*cores, 0.5, stop, clock=clock, on_rollback=lambda: rollbacks.append(1))
    on_canary = [key for key, role in zip(KEYS[:400], roles(router, KEYS[:400])) if role == "canary"]
    stop.write_bytes(orjson.dumps({"model_version": "7", "reason": "another canary", "time": 1.7e9}))
    clock.now += CHECK_EVERY_S
    assert set(roles(router, on_canary)) == {"canary"} and not router.stopped  # another version's stop: ignored
    stop.write_bytes(b'{"model_version": "2", "rea')  # caught mid-write: read again at the next look
    clock.now += CHECK_EVERY_S
    assert set(roles(router, on_canary)) == {"canary"}
    stop.write_bytes(orjson.dumps({"model_version": "2", "reason": "failure rate", "time": 1.7e9}))
    clock.now += CHECK_EVERY_S / 2
    assert set(roles(router, on_canary)) == {"canary"}  # not looked at again within CHECK_EVERY_S
    clock.now += CHECK_EVERY_S / 2
    assert set(roles(router, on_canary + [None] * 100)) == {"champion"}
    assert router.describe() == {"model_version": "2", "fraction": 0.5, "stopped": True}
    clock.now += 10 * CHECK_EVERY_S
    stop.write_bytes(orjson.dumps({"model_version": "2", "reason": "again", "time": 1.7e9 + 1}))
    assert set(roles(router, on_canary)) == {"champion"} and rollbacks == [1]


def test_a_worker_started_after_the_stop_never_routes_to_the_canary_nor_counts_a_rollback(cores, tmp_path):
    stop, rollbacks = tmp_path / "canary-stop.json", []
    stop.write_bytes(orjson.dumps({"model_version": "2", "reason": "rolled back", "time": 1.7e9}))
    router = Router(*cores, 1.0, stop, on_rollback=lambda: rollbacks.append(1))
    assert set(roles(router, KEYS[:100] + [None])) == {"champion"} and router.stopped and rollbacks == []


def test_deploy_refuses_a_canary_whose_classes_differ_from_the_champions(registry, tmp_path):
    from mlops_nb.products import file_sha256

    settings, onnx_path = registry
    sha = file_sha256(onnx_path)
    assert register(settings, onnx_path, 0.95, onnx_sha256=sha)[1].passed  # v1: champion
    assert not register(settings, onnx_path, 0.5, onnx_sha256=sha, classes=["x", "y", "w"])[1].passed  # challenger
    refused = subprocess.run([str(BIN / "mlops-nb"), "deploy"], cwd=tmp_path, capture_output=True, text=True,
                             env=project_env(tmp_path, PYTHONPATH=str(REPO), MLOPS_NB_SERVING_CANARY_FRACTION="0.5"),
                             timeout=300)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "the challenger v2 differs from v1 in classes: a canary must answer the same requests" in refused.stderr
    assert "[serving] canary_fraction = 0" in refused.stderr


def scored_counts(url: str) -> dict:
    """The project's routing counters from /metrics: {(model_version, role): n} and the rollbacks."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = [s for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text)
               for s in family.samples]
    scored = {(s.labels["model_version"], s.labels["role"]): s.value for s in samples
              if s.name == "mlops_nb_scored_requests_total"}
    return {**scored, "rollbacks": sum(s.value for s in samples if s.name == "mlops_nb_canary_rollbacks_total")}


@pytest.mark.engines
def test_the_served_bento_routes_sticky_canary_requests_and_stops_on_the_stop_file(built_project, tmp_path):
    from mlops_nb.monitoring import read_prediction_log
    from mlops_nb.serving.bento import served

    root = built_project
    run_build(root)
    run_build(root, "--force", "--partially", "register", MLOPS_NB_GATES_MIN_SCORE="1.0")  # refused: the challenger
    canary_on = {"MLOPS_NB_SERVING_CANARY_FRACTION": "0.5"}
    deployed = subprocess.run([str(BIN / "mlops-nb"), "deploy"], cwd=root, env=project_env(root, **canary_on),
                              capture_output=True, text=True, timeout=600)
    assert deployed.returncode == 0, deployed.stderr
    champion, canary = json.loads(deployed.stdout)["model_version"], json.loads(deployed.stdout)["canary_version"]
    assert canary not in (None, champion)

    log = tmp_path / "logs/predictions.jsonl"
    log.parent.mkdir()
    env = project_env(root, MLOPS_NB_MONITORING_PREDICTION_LOG=str(log), **canary_on)
    subjects = [f"customer-{i}" for i in range(40)]

    def answer(subject: str | None) -> str:
        got = httpx.post(f"{url}/predict", json={"instances": [[0.0] * 64]}, timeout=30,
                         headers={"x-subject": subject} if subject else {})
        assert got.status_code == 200, got.text
        return got.json()["model_version"]

    with served("", cwd=root, env=env, log=tmp_path / "serve.log") as url:
        assert httpx.get(f"{url}/model/metadata").json()["canary"] == {"model_version": canary, "fraction": 0.5,
                                                                       "stopped": False}
        met = {subject: {answer(subject) for _ in range(3)} for subject in subjects}
        assert all(len(versions) == 1 for versions in met.values())  # sticky per X-Subject
        on_canary = [subject for subject, versions in met.items() if versions == {canary}]
        assert 0 < len(on_canary) < len(subjects)
        unkeyed = [answer(None) for _ in range(40)]
        assert set(unkeyed) == {champion, canary}
        counts = scored_counts(url)
        assert counts[(canary, "canary")] == 3 * len(on_canary) + unkeyed.count(canary)
        assert counts[(champion, "champion")] == 3 * (len(subjects) - len(on_canary)) + unkeyed.count(champion)
        assert counts["rollbacks"] == 0

        (log.parent / "canary-stop.json").write_text(json.dumps({"model_version": canary, "reason": "test",
                                                                 "time": time.time()}))
        deadline = time.monotonic() + 60
        while not httpx.get(f"{url}/model/metadata").json()["canary"]["stopped"]:  # looked at once a second
            assert time.monotonic() < deadline, "the stop file was never honoured"
            answer(on_canary[0])
            time.sleep(0.1)
        assert {answer(subject) for subject in on_canary + [None] * 20} == {champion}
        assert scored_counts(url)["rollbacks"] == 1
    records = read_prediction_log(log)
    assert {(r["role"], r["model_version"]) for r in records} == {("champion", champion), ("canary", canary)}
    assert {r["subject"] for r in records if r["role"] == "canary"} >= set(on_canary)
