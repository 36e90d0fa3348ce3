"""Serving benchmark: prints figures and ratios from one run (run after a build; not a test).

    .venv/bin/python benchmarks/serving.py [--requests 2000] [--seconds 20]

In-process ONNX Runtime calls/s, served requests/s with p50/p99 latency at concurrency 1 and 32 over loopback
(`bentoml serve` of the built bento), and torch eager vs ONNX fp32 vs int8 latency at batch 1 and 256.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter

import httpx
import numpy as np

from mlops_nb.bento import served
from mlops_nb.onnx_export import onnx_predict, ort_session
from mlops_nb.pipeline import TELEMETRY_OFF
from mlops_nb.products import read_json
from mlops_nb.research.data import read_snapshot
from mlops_nb.research.model import load_model, predict_proba
from mlops_nb.settings import load_settings


def per_call_us(fn, *, seconds: float = 2.0, max_calls: int = 100_000) -> float:
    """Median-free steady timing: mean microseconds per call over a bounded window, after a warm-up."""
    for _ in range(20):
        fn()
    calls, start = 0, time.perf_counter()
    while calls < max_calls and time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls * 1e6


async def load(url: str, rows: list[list[float]], *, concurrency: int, requests: int, seconds: float) -> dict:
    """Send single-row requests with `concurrency` in flight, bounded by count and time."""
    latencies, errors, sent = [], Counter(), 0
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            row = rows[sent % len(rows)]
            sent += 1
            t = time.perf_counter()
            response = await client.post(f"{url}/predict", json={"instances": [row]})
            latencies.append(time.perf_counter() - t)
            if response.status_code != 200:
                errors[response.status_code] += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"requests": len(ms), "errors": dict(errors) or "none", "rps": len(ms) / wall, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="max requests per concurrency level")
    parser.add_argument("--seconds", type=float, default=20, help="max seconds per concurrency level")
    args = parser.parse_args()
    os.environ.update(TELEMETRY_OFF)
    settings = load_settings()
    products = settings.products_dir
    manifest, split = read_json(products / "snapshot/manifest.json"), read_json(products / "snapshot/split.json")
    frame = read_snapshot(manifest["path"], manifest["sha256"]).iloc[split["test"]]
    raw = frame[manifest["features"]].to_numpy(np.float32)
    model, standardizer = load_model(products / "train/model.pt")
    x = standardizer.transform(raw)
    fp32, int8 = ort_session(products / "export/model.onnx"), ort_session(products / "export/model.int8.onnx")
    batch = np.resize(x, (256, x.shape[1]))

    print("== in-process latency (us per call, CPU)")
    table = {}
    for name, fn1, fn256 in [
        ("torch eager", lambda: predict_proba(model, x[:1]), lambda: predict_proba(model, batch)),
        ("onnx fp32", lambda: onnx_predict(fp32, x[:1]), lambda: onnx_predict(fp32, batch)),
        ("onnx int8", lambda: onnx_predict(int8, x[:1]), lambda: onnx_predict(int8, batch)),
    ]:
        table[name] = (per_call_us(fn1), per_call_us(fn256))
        print(f"{name:12s} batch 1: {table[name][0]:8.1f} us ({1e6 / table[name][0]:9.0f} calls/s)   "
              f"batch 256: {table[name][1]:8.1f} us ({256e6 / table[name][1]:10.0f} rows/s)")
    base = table["onnx fp32"]
    for name in ("torch eager", "onnx int8"):
        print(f"ratio {name} / onnx fp32: batch 1 {table[name][0] / base[0]:.2f}x, batch 256 "
              f"{table[name][1] / base[1]:.2f}x")

    print("== served over loopback (bentoml serve, single-row requests)")
    bento = read_json(products / "bento/bento.json")["bento_tag"]
    with served(bento, cwd=settings.root) as url:
        meta = httpx.get(f"{url}/model/metadata").json()
        print(f"bento {bento}, model v{meta['model_version']} ({meta['variant']}), provider {meta['provider']}")
        rows, results = raw.tolist(), {}
        for concurrency in (1, 32):
            r = results[concurrency] = asyncio.run(
                load(url, rows, concurrency=concurrency, requests=args.requests, seconds=args.seconds))
            print(f"concurrency {concurrency:2d}: {r['rps']:7.1f} req/s  p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms"
                  f"  ({r['requests']} requests, errors by status: {r['errors']})")
    print(f"ratio served c=32 / c=1 throughput: {results[32]['rps'] / results[1]['rps']:.2f}x")
    print(f"ratio in-process fp32 batch-1 calls/s / served c=1 req/s: {1e6 / base[0] / results[1]['rps']:.0f}x")


if __name__ == "__main__":
    main()
