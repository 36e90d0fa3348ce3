"""Streaming benchmark: `mlops-nb stream` against its own redis-server, events/s and end-to-end latency.

    .venv/bin/python benchmarks/streaming.py [PROJECT] [--events 20000] [--paced 2000] [--rate 250]
                                             [--batch-sizes 1,64] [--rows-per-event 1]

Run after a build of PROJECT (default: this repository; it needs the registry's champion); prints figures, not a
test. It starts a redis-server on a free loopback port (no persistence) and, per max_batch_size, one consumer
(`mlops-nb stream` as a subprocess, [streaming] max_wait_ms as set, the prediction log in a temporary folder), then:
paced, `--paced` events sent one by one at `--rate` events/s: p50/p99 end-to-end latency, from the event's XADD to
its result's XADD (both stream entry ids' milliseconds, so 1 ms resolution); backlog, `--events` events sent in
pipelines as fast as Redis takes them: events/s from the first event's XADD to the last result's XADD. Events hold
`--rows-per-event` of the build's test-split rows, resampled; every event must be answered exactly once. Results
also go to PROJECT's products/evidence/streaming-benchmark.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import redis

from mlops_nb.pipeline import TELEMETRY_OFF
from mlops_nb.products import write_json
from mlops_nb.serving.bento import free_port
from mlops_nb.settings import load_settings

from batch import int_list, test_split  # benchmarks/batch.py: a script's folder is on sys.path

BIN = Path(sys.executable).parent
SEED = 0
PIPELINE = 1000  # events per pipeline in the backlog phase


def milliseconds(entry_id: bytes) -> int:
    return int(entry_id.split(b"-")[0])


def wait_for(predicate, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the consumer exited ({process.returncode}) or timed out")
        time.sleep(0.01)


def answered(client: redis.Redis, prefix: str, expected: int) -> dict[str, bytes]:
    """Event id -> its result's entry id, for the events whose id starts with `prefix`: `expected` of them, each
    answered once."""
    found = [(fields[b"id"].decode(), entry) for entry, fields in client.xrange("out")
             if fields[b"id"].decode().startswith(prefix)]
    if len({i for i, _ in found}) != len(found) or len(found) != expected:
        raise AssertionError(f"{prefix}: {len(found)} results for {len({i for i, _ in found})} of {expected} events")
    return dict(found)


def paced(client, process, requests: list[bytes], rate: float, prefix: str) -> np.ndarray:
    """Send the events one by one at `rate` per second; their end-to-end latencies (ms)."""
    sent, started = {}, time.perf_counter()
    for i, request in enumerate(requests):
        if (ahead := started + i / rate - time.perf_counter()) > 0:
            time.sleep(ahead)
        sent[f"{prefix}{i}"] = client.xadd("in", {"id": f"{prefix}{i}", "request": request})
    wait_for(lambda: client.xlen("out") >= len(requests), process)  # the first phase: `out` holds its results only
    results = answered(client, prefix, len(requests))
    return np.array([milliseconds(results[i]) - milliseconds(entry) for i, entry in sent.items()])


def backlog(client, process, requests: list[bytes], prefix: str) -> float:
    """Send the events in pipelines as fast as Redis takes them; events/s until the last one is answered."""
    before = client.xlen("out")
    sent = []
    for start in range(0, len(requests), PIPELINE):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + PIPELINE, len(requests))):
            pipe.xadd("in", {"id": f"{prefix}{i}", "request": requests[i]})
        sent += pipe.execute()
    wait_for(lambda: client.xlen("out") >= before + len(requests), process)
    results = answered(client, prefix, len(requests))
    return len(requests) / max(milliseconds(max(results.values(), key=milliseconds)) - milliseconds(sent[0]), 1) * 1000


def run_setting(project: Path, url: str, client, batch_size: int, requests: list[bytes], paced_n: int,
                rate: float, tmp: Path) -> dict:
    """One consumer with max_batch_size `batch_size`: the paced phase, then the backlog phase."""
    env = {**os.environ, **TELEMETRY_OFF, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "REDIS_URL": url,
           "MLOPS_NB_STREAMING_MAX_BATCH_SIZE": str(batch_size),
           "MLOPS_NB_MONITORING_PREDICTION_LOG": str(tmp / f"predictions-{batch_size}.jsonl")}
    client.flushall()
    with open(tmp / f"consumer-{batch_size}.log", "w") as log:
        process = subprocess.Popen([str(BIN / "mlops-nb"), "stream", "--input", "in", "--output", "out"],
                                   cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for(lambda: client.exists("in") and client.xinfo_groups("in"), process)
        latency = paced(client, process, requests[:paced_n], rate, "p")
        events_per_s = backlog(client, process, requests, "b")
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {"max_batch_size": batch_size, "events_per_s": events_per_s, "paced_events": paced_n, "rate": rate,
            "p50_ms": float(np.percentile(latency, 50)), "p99_ms": float(np.percentile(latency, 99)),
            "max_ms": float(latency.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", nargs="?", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--events", type=int, default=20_000, help="events of the backlog phase")
    parser.add_argument("--paced", type=int, default=2000, help="events of the paced (latency) phase")
    parser.add_argument("--rate", type=float, default=250, help="events/s of the paced phase: well under capacity")
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 64], help="[streaming] max_batch_size values")
    parser.add_argument("--rows-per-event", type=int, default=1)
    args = parser.parse_args()
    os.environ.update(TELEMETRY_OFF)
    settings = load_settings(args.project)
    frame, _, features = test_split(settings)
    values = frame[features].to_numpy(np.float64)
    pick = np.random.default_rng(SEED).integers(0, len(values), (args.events, args.rows_per_event))
    requests = [orjson.dumps({"instances": values[rows]}, option=orjson.OPT_SERIALIZE_NUMPY) for rows in pick]
    server = shutil.which("redis-server") or sys.exit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mlops-nb-stream-") as tmp:
        redis_process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                          "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            records = []
            for size in args.batch_sizes:
                records.append(run_setting(args.project, f"redis://127.0.0.1:{port}/0", client, size, requests,
                                           min(args.paced, args.events), args.rate, Path(tmp)))
                r = records[-1]
                print(f"  max_batch_size {size}: {r['events_per_s']:,.0f} events/s, paced p50 {r['p50_ms']:.0f} ms, "
                      f"p99 {r['p99_ms']:.0f} ms", file=sys.stderr, flush=True)
        finally:
            redis_process.terminate()
            redis_process.wait(timeout=30)
    print(f"## mlops-nb stream: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, redis-server "
          f"on loopback, {args.rows_per_event} row(s) per event, max_wait_ms {settings.streaming.max_wait_ms:g}; "
          f"backlog {args.events:,} events, paced {min(args.paced, args.events):,} events at {args.rate:g}/s\n")
    print("| max_batch_size | backlog events/s | paced p50 ms | paced p99 ms | paced max ms |")
    print("|---|---|---|---|---|")
    for r in records:
        print(f"| {r['max_batch_size']} | {r['events_per_s']:,.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
              f"{r['max_ms']:.0f} |")
    base = records[0]
    for r in records[1:]:
        print(f"\nmax_batch_size {r['max_batch_size']} vs {base['max_batch_size']}: "
              f"{r['events_per_s'] / base['events_per_s']:.1f}x the events/s, p99 {r['p99_ms']:.0f} vs "
              f"{base['p99_ms']:.0f} ms")
    evidence = settings.products_dir / "evidence/streaming-benchmark.json"
    write_json(evidence, {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(),
                          "rows_per_event": args.rows_per_event, "results": records})
    print(f"\nresults: {evidence}")


if __name__ == "__main__":
    main()
