"""`mlops-nb stream` on the built project against a real redis-server (its own, on a free loopback port): a consumer
SIGKILLed mid-run and a second one finishing, malformed events to the dead-letter stream, replays without a second
answer."""

import json
import os
import shutil
import signal
import subprocess
import time
from itertools import cycle, islice

import httpx
import numpy as np
import orjson
import pytest
import redis
from conftest import BIN, project_env

from mlops_nb.monitoring import read_prediction_log
from mlops_nb.products import read_json
from mlops_nb.research.data import read_snapshot
from mlops_nb.serving.bento import free_port
from mlops_nb.streaming import masked_url

pytestmark = pytest.mark.engines

PASSWORD = "s3cret-never-printed"
GROUP, DEAD = "mlops-nb", "mlops-nb:dead-letter"  # settings.ini's [streaming] group and dead_letter
EVENTS = 10_000


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A redis-server with a password on a free loopback port, no persistence; yields (URL, client)."""
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Debian's redis-server is not installed (`apt-get install -y redis-server`)")
        pytest.skip("Debian's redis-server is not installed (`apt-get install -y redis-server`)")
    folder, port = tmp_path_factory.mktemp("redis"), free_port()
    with open(folder / "redis.log", "w") as log:
        process = subprocess.Popen([path, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                    "no", "--dir", str(folder), "--requirepass", PASSWORD], stdout=log,
                                   stderr=subprocess.STDOUT)
    client = redis.Redis(port=port, password=PASSWORD)
    try:
        wait_for(lambda: _pings(client), process, timeout_s=10)
        yield f"redis://:{PASSWORD}@127.0.0.1:{port}/0", client
    finally:
        process.terminate()
        process.wait(timeout=30)


def _pings(client) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


@pytest.fixture
def client(redis_server):
    redis_server[1].flushall()
    return redis_server[1]


@pytest.fixture(scope="module")
def rows(built_project) -> list[list[float]]:
    """The build's test-split rows."""
    products = built_project / "products"
    manifest = read_json(products / "snapshot/manifest.json")
    test = read_json(products / "snapshot/split.json")["test"]
    frame = read_snapshot(manifest["path"], manifest["sha256"]).iloc[test]
    return frame[manifest["features"]].to_numpy(np.float64).tolist()


def wait_for(predicate, process, *, timeout_s: float = 60, every_s: float = 0.02):
    """Poll `predicate` until true, failing when `process` exits or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert process.poll() is None, f"exited with {process.returncode}"
        assert time.monotonic() < deadline, f"not done after {timeout_s} s"
        time.sleep(every_s)


def consumer(root, url, tmp_path, name, *args, **overrides) -> subprocess.Popen:
    """`mlops-nb stream --input in --output out --consumer NAME ARGS` in the project copy, the URL in REDIS_URL,
    the prediction log in tmp_path; stderr to tmp_path/NAME.log."""
    env = project_env(root, REDIS_URL=url, MLOPS_NB_MONITORING_PREDICTION_LOG=str(tmp_path / "predictions.jsonl"),
                      **overrides)
    with open(tmp_path / f"{name}.log", "w") as log:
        return subprocess.Popen([str(BIN / "mlops-nb"), "stream", "--input", "in", "--output", "out", "--consumer",
                                 name, *args], cwd=root, env=env, stdout=subprocess.PIPE, stderr=log, text=True)


def stopped(process: subprocess.Popen) -> dict:
    """SIGTERM a consumer; its exit status must be 0; its summary."""
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    return json.loads(out)


def results(client, stream: str = "out") -> list[dict]:
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in client.xrange(stream)]


def drained(client) -> bool:
    """Every entry of `in` delivered to the group and acknowledged."""
    group = client.xinfo_groups("in")[0]
    return group["pending"] == 0 and group["last-delivered-id"] == client.xinfo_stream("in")["last-generated-id"]


def send(client, events: list[dict]) -> None:
    pipe = client.pipeline(transaction=False)
    for event in events:
        pipe.xadd("in", event)
    pipe.execute()


def test_a_consumer_killed_mid_run_leaves_its_events_to_the_next_one_10k_answers_once_each_as_the_api_answers(
        built_project, server, redis_server, client, rows, tmp_path):
    url, _, _ = server
    version = httpx.post(f"{url}/predict", json={"instances": rows[:1]}, timeout=30).json()["model_version"]
    source = cycle(rows)
    sent = {f"e{i}": list(islice(source, 1 + i % 3)) for i in range(EVENTS)}  # 1 to 3 rows each
    send(client, [{"id": i, "request": orjson.dumps({"instances": r})} for i, r in sent.items()])  # before the group

    first = consumer(built_project, redis_server[0], tmp_path, "first", "--model", version)
    wait_for(lambda: client.xlen("out") >= 1000, first, every_s=0.005)
    while True:  # kill it while events are delivered to it and not yet answered
        first.send_signal(signal.SIGSTOP)
        time.sleep(0.05)
        if client.xpending("in", GROUP)["pending"]:
            break
        first.send_signal(signal.SIGCONT)
    first.kill()
    first.wait()
    answered_before, pending = client.xlen("out"), client.xpending("in", GROUP)["pending"]
    assert 0 < answered_before < EVENTS and pending > 0

    second = consumer(built_project, redis_server[0], tmp_path, "second", "--model", version,
                      MLOPS_NB_STREAMING_CLAIM_IDLE_MS="100")
    wait_for(lambda: client.xlen("out") >= EVENTS and drained(client), second)
    summary = stopped(second)
    assert summary["answered"] == EVENTS - answered_before and summary["claimed"] >= pending
    assert summary["dead_letters"] == 0 and client.xlen(DEAD) == 0

    answers = results(client)
    assert len(answers) == EVENTS and {a["id"] for a in answers} == set(sent)  # one answer per id
    bodies = {a["id"]: orjson.loads(a["result"]) for a in answers}
    assert {a["model_version"] for a in answers} == {version} and all(float(a["latency_ms"]) > 0 for a in answers)
    ids = list(sent)
    flat = [row for i in ids for row in sent[i]]
    online = [p for start in range(0, len(flat), 1024)
              for p in httpx.post(f"{url}/predict", json={"instances": flat[start:start + 1024]},
                                  timeout=60).json()["predictions"]]
    streamed = [p for i in ids for p in bodies[i]["predictions"]]
    assert [p["label"] for p in streamed] == [p["label"] for p in online]
    api = httpx.post(f"{url}/predict", json={"instances": sent["e0"]}, timeout=30).json()
    assert bodies["e0"].keys() == api.keys() and bodies["e0"]["predictions"][0].keys() == api["predictions"][0].keys()

    logged = read_prediction_log(tmp_path / "predictions.jsonl")  # what the killed consumer had queued is lost
    by_request = {body["request_id"]: i for i, body in bodies.items()}
    assert len({r["request_id"] for r in logged}) == len(logged) >= summary["answered"]
    assert all(r["inputs"] == sent[by_request[r["request_id"]]] for r in logged)
    assert "***" in (tmp_path / "second.log").read_text()
    assert PASSWORD not in (tmp_path / "first.log").read_text() + (tmp_path / "second.log").read_text()


def test_malformed_events_go_to_the_dead_letter_stream_naming_the_field_and_the_consumer_keeps_going(
        built_project, redis_server, client, rows, tmp_path):
    process = consumer(built_project, redis_server[0], tmp_path, "one")  # makes the stream and the group
    wait_for(lambda: client.exists("in") and client.xinfo_groups("in"), process, timeout_s=120)
    good = orjson.dumps({"instances": rows[:2]})
    bad = {"e1": "{not json", "e2": orjson.dumps({"instances": [rows[0][:-1]]}),  # a value short
           "e3": orjson.dumps({"instances": [rows[0][:5] + [17.0] + rows[0][6:]]}),  # out of the range 0..16
           "e4": orjson.dumps({"instances": rows[:1], "extra": 1})}
    send(client, [{"id": "ok1", "request": good}, {"request": good}, *[{"id": i, "request": r} for i, r in bad.items()],
                  {"id": "ok2", "request": good}])
    wait_for(lambda: drained(client), process)
    assert stopped(process) == {"answered": 2, "replays": 0, "dead_letters": 5, "claimed": 0}
    assert [a["id"] for a in results(client)] == ["ok1", "ok2"]
    dead = {d["id"]: d for d in results(client, DEAD)}
    assert {i: d["field"] for i, d in dead.items()} == {"": "id", "e1": "request", "e2": "instances[0]",
                                                        "e3": "instances[0][5]", "e4": "extra"}
    assert "not valid JSON" in dead["e1"]["reason"] and "has 63 values; expected 64" in dead["e2"]["reason"]
    assert "17.0 is outside the allowed range" in dead["e3"]["reason"] and "unknown field" in dead["e4"]["reason"]
    assert all(d["stream"] == "in" and client.xrange("in", d["entry"], d["entry"]) for d in dead.values())


def test_a_replayed_event_gets_no_second_answer(built_project, redis_server, client, rows, tmp_path):
    request = orjson.dumps({"instances": rows[:1]})
    send(client, [{"id": "r1", "request": request}, {"id": "r2", "request": request}, {"request": request}])
    process = consumer(built_project, redis_server[0], tmp_path, "one")
    wait_for(lambda: client.exists("in") and client.xinfo_groups("in") and drained(client), process, timeout_s=120)
    send(client, [{"id": "r1", "request": request}])  # the producer sent it twice
    wait_for(lambda: drained(client), process)
    client.xgroup_setid("in", GROUP, "0")  # every entry delivered again, as after a crash between write and ack
    wait_for(lambda: drained(client), process)
    assert stopped(process) == {"answered": 2, "replays": 1 + 4, "dead_letters": 1, "claimed": 0}
    assert [a["id"] for a in results(client)] == ["r1", "r2"] and client.xlen(DEAD) == 1
    assert len(read_prediction_log(tmp_path / "predictions.jsonl")) == 2


def test_without_a_redis_url_the_command_says_which_variable_to_set(built_project):
    result = subprocess.run([str(BIN / "mlops-nb"), "stream", "--input", "in", "--output", "out"], cwd=built_project,
                            env={k: v for k, v in project_env(built_project).items() if k != "REDIS_URL"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "set REDIS_URL" in result.stderr


def test_a_redis_url_is_shown_only_with_its_password_masked():
    assert masked_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert masked_url("rediss://user:p%40ss:w@host/1") == "rediss://user:***@host/1"
    assert masked_url("redis://token@host") == "redis://***@host"  # a password written where the user goes
    assert masked_url("unix:///run/redis.sock?db=0&password=pw") == "unix:///run/redis.sock?db=0&password=***"
    assert masked_url("redis://host:6379/0") == "redis://host:6379/0"
