"""A bounded soak of the served bento (loopback, stops by itself): 64 clients for SOAK_SECONDS, then SIGTERM with
requests in flight. Zero 5xx, flat memory, every answered request in the prediction log, no line lost or torn."""

import asyncio
import os
import signal
import time
from collections import Counter

import httpx
import psutil
import pytest
from conftest import project_env

from mlops_nb.monitoring import read_prediction_log
from mlops_nb.products import read_json
from mlops_nb.serving.bento import bentoml_serve

pytestmark = pytest.mark.engines

CLIENTS = 64
SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", 60))
RSS_GROWTH_BOUND = 32 * 2**20  # bytes the server's processes may grow by after the first tenth of the soak
ROW = [float(i % 17) for i in range(64)]


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


async def load(url: str, seconds: float, answered: list, statuses: Counter, errors: Counter) -> None:
    """CLIENTS concurrent clients, each sending single-row requests until `seconds` have passed."""
    deadline = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            try:
                response = await http.post(f"{url}/predict", json={"instances": [ROW]})
            except httpx.HTTPError as error:
                errors[type(error).__name__] += 1
                await asyncio.sleep(0.01)
                continue
            statuses[response.status_code] += 1
            if response.status_code == 200:
                answered.append(response.headers["x-request-id"])

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=CLIENTS)) as http:
        await asyncio.gather(*(client(http) for _ in range(CLIENTS)))


def test_soak_then_graceful_shutdown_loses_no_answer_and_no_log_line(built_project, tmp_path):
    predictions = tmp_path / "predictions.jsonl"
    env = project_env(built_project, MLOPS_NB_MONITORING_PREDICTION_LOG=str(predictions))
    bento = read_json(built_project / "products/bento/bento.json")["bento_tag"]
    answered, statuses, errors = [], Counter(), Counter()
    with bentoml_serve(bento, cwd=built_project, env=env, log=tmp_path / "serve.log") as server:
        leader = psutil.Process(server.process.pid)
        asyncio.run(load(server.url, SOAK_SECONDS / 10, answered, statuses, errors))
        warm = tree_rss(leader)
        asyncio.run(load(server.url, SOAK_SECONDS * 9 / 10, answered, statuses, errors))
        grown = tree_rss(leader) - warm

        async def load_then_terminate():
            clients = asyncio.create_task(load(server.url, 3, answered, statuses, errors))
            await asyncio.sleep(1)
            os.killpg(server.process.pid, signal.SIGTERM)  # while CLIENTS requests are in flight
            await clients

        during_shutdown = len(answered)
        asyncio.run(load_then_terminate())
        server.process.wait(timeout=60)
        during_shutdown = len(answered) - during_shutdown
    print(f"\nsoak: {len(answered)} answered in {SOAK_SECONDS:.0f} s + shutdown ({during_shutdown} answered during "
          f"the shutdown's load), statuses {dict(statuses)}, client errors {dict(errors)}, "
          f"RSS {warm / 2**20:.1f} MiB after warm-up, grew {grown / 2**20:+.1f} MiB")
    assert not [status for status in statuses if status >= 500]
    assert grown < RSS_GROWTH_BOUND
    records = read_prediction_log(predictions)  # every line parses: none torn
    logged = [r["request_id"] for r in records]
    assert len(logged) == len(set(logged)) and set(logged) == set(answered)
    assert during_shutdown > 0
