"""Drift monitor calibration: false-positive and detection rates of `mlops-nb monitor`'s verdict per shift and size.

    .venv/bin/python benchmarks/drift_rates.py [--seeds 20] [--rows 500]

Run after a build (it needs products/ and the registered version). For each seed, `--rows` rows of the build's
test split are drawn with `mlops_nb.traffic.traffic` (the shifts `mlops-nb traffic` sends: none, offset, noise,
class-mix, at the sizes below), answered by the served variant (ONNX Runtime), logged as champion records of the
registered version, and judged by `drift.check` with the project's [monitoring] thresholds. Prints the share of
seeds flagged as drift per shift and size (for `none`: the false-positive rate) and which checks moved.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from collections import Counter
from pathlib import Path

import orjson

from mlops_nb.drift import check
from mlops_nb.onnx_export import onnx_predict, ort_session
from mlops_nb.pipeline import TELEMETRY_OFF
from mlops_nb.products import read_json
from mlops_nb.settings import load_settings
from mlops_nb.traffic import held_out_split, traffic

SIZES = {"none": [0.0], "offset": [0.005, 0.01, 0.02, 0.05], "noise": [0.1, 0.25, 0.5, 1.0],
         "class-mix": [0.05, 0.1, 0.2, 0.3]}


def judged(settings, rows, answers, registration, path: Path):
    """The verdict on one window: `rows` logged with their `answers` as the registered version's records."""
    head = {"schema_version": 1, "model_name": registration["model_name"], "role": "champion", "subject": None,
            "model_version": str(registration["version"]), "latency_ms": 1.0}
    with open(path, "wb") as f:
        for i, (row, probabilities) in enumerate(zip(rows, answers)):
            f.write(orjson.dumps({**head, "request_id": f"r{i}", "time": 1.7e9 + i, "inputs": [row.tolist()],
                                  "labels": [int(probabilities.argmax())],
                                  "confidence": [float(probabilities.max())]}) + b"\n")
    return check(settings, [path])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--rows", type=int, default=500)
    args = parser.parse_args()
    os.environ.update(TELEMETRY_OFF)
    settings = load_settings()
    products = settings.products_dir
    registration = read_json(products / "register/registration.json")
    card = registration["card"]
    session = ort_session(read_json(products / "export/export.json")["served_path"])
    x, y, _ = held_out_split(settings)
    print(f"## drift verdicts: {args.seeds} seeds x {args.rows} rows per window, v{registration['version']}, "
          f"thresholds {settings.monitoring.model_dump(include={'psi_threshold', 'ks_alpha', 'min_rows'})}\n")
    print("| shift | size | flagged | rate | checks that moved (seeds) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for shift, sizes in SIZES.items():
            for size in sizes:
                flagged, moved, features = 0, Counter(), []
                for seed in range(args.seeds):
                    rows = traffic(x, y, rows=args.rows, shift=shift, size=size, seed=seed,
                                   low=card["feature_min"], high=card["feature_max"])
                    verdict = judged(settings, rows, onnx_predict(session, rows), registration, Path(tmp) / "log")
                    flagged += verdict.status == "drift"
                    for v in verdict.versions:
                        features += [n] if (n := sum(c.drifted for c in v.features)) else []
                        moved.update(c.name for c in v.prediction if c.drifted)
                if features:
                    moved[f"features (median {statistics.median(features):g} of {len(x[0])})"] = len(features)
                print(f"| {shift} | {size:g} | {flagged}/{args.seeds} | {flagged / args.seeds:.0%} | "
                      f"{', '.join(f'{k} {n}' for k, n in sorted(moved.items())) or '-'} |", flush=True)


if __name__ == "__main__":
    main()
