"""In-process model-call benchmark: prints figures and ratios from one run (run after a build; not a test).

    .venv/bin/python benchmarks/serving.py

Microseconds per call of the served pipeline (raw rows in, probabilities out) at batch 1 and 256, on one CPU
thread: torch eager (the exported Standardizer + MLP), ONNX Runtime fp32 and int8. The served HTTP figures
against MLflow and the framework floors come from benchmarks/peers.py.
"""

from __future__ import annotations

import time

import numpy as np

from mlops_nb.onnx_export import onnx_predict, ort_session
from mlops_nb.products import read_json
from mlops_nb.research.data import read_snapshot
from mlops_nb.research.model import load_model, predict_proba
from mlops_nb.settings import load_settings


def per_call_us(fn, *, seconds: float = 2.0, max_calls: int = 100_000) -> float:
    """Mean microseconds per call over a bounded window, after a warm-up."""
    for _ in range(20):
        fn()
    calls, start = 0, time.perf_counter()
    while calls < max_calls and time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    import torch

    torch.set_num_threads(1)
    products = load_settings().products_dir
    manifest, split = read_json(products / "snapshot/manifest.json"), read_json(products / "snapshot/split.json")
    raw = read_snapshot(manifest["path"], manifest["sha256"]).iloc[split["test"]][manifest["features"]]
    raw = raw.to_numpy(np.float32)
    batch = np.resize(raw, (256, raw.shape[1]))
    model, standardizer = load_model(products / "train/model.pt")
    fp32 = ort_session(products / "export/model.onnx", threads=1)
    int8 = ort_session(products / "export/variants/int8.onnx", threads=1)
    table = {}
    for name, fn in [("torch eager", lambda x: predict_proba(model, standardizer.transform(x))),
                     ("onnx fp32", lambda x: onnx_predict(fp32, x)), ("onnx int8", lambda x: onnx_predict(int8, x))]:
        table[name] = per_call_us(lambda: fn(raw[:1])), per_call_us(lambda: fn(batch))
        print(f"{name:12s} batch 1: {table[name][0]:8.1f} us ({1e6 / table[name][0]:9.0f} calls/s)   "
              f"batch 256: {table[name][1]:8.1f} us ({256e6 / table[name][1]:10.0f} rows/s)")
    base = table["onnx fp32"]
    for name in ("torch eager", "onnx int8"):
        print(f"ratio {name} / onnx fp32: batch 1 {table[name][0] / base[0]:.2f}x, batch 256 "
              f"{table[name][1] / base[1]:.2f}x")


if __name__ == "__main__":
    main()
