"""Accuracy-on-production-data benchmark: `mlops-nb monitor --labels` on a generated log of 1M rows.

    .venv/bin/python benchmarks/monitor_labels.py [--rows 1000000] [--labelled 0.5] [--features 64]

Needs no build: a temporary project whose sqlite registry holds one version's model card (test accuracy 0.95; the
registered figure is all the check reads), a prediction log of `--rows` one-row champion records over ten days with
`--features` values each and UUID-long request ids, and a CSV of true labels for a `--labelled` share of the rows
(95% agreeing with the answer), in random order. `mlops-nb monitor --log LOG --labels CSV --json` runs as a
subprocess (benchmarks/batch.py's wrapper): wall and CPU time (start-up included), peak RSS (`os.wait4`'s ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from mlops_nb.contracts import ModelCard
from mlops_nb.pipeline import TELEMETRY_OFF
from mlops_nb.settings import load_settings
from mlops_nb.tracking import connect

sys.path.insert(0, str(Path(__file__).parent))
from batch import BIN, MEASURE  # noqa: E402

NAME, CLASSES, T0, DAYS = "bench", [str(c) for c in range(10)], 1_700_000_000, 10


def project(folder: Path, features: int):
    """A project folder whose registry holds version 1 of NAME with a card claiming test accuracy 0.95."""
    (folder / "settings.ini").write_text(f"[registry]\nmodel_name = {NAME}\n")
    settings = load_settings(folder, environ={})
    client = connect(settings)
    card = ModelCard(model_name=NAME, run_id="none", variant="fp32", features=[f"f{i}" for i in range(features)],
                     classes=CLASSES, feature_min=0, feature_max=16, data_sha256="-", onnx_sha256="-",
                     weights_sha256="-", test_accuracy=0.95, parity_max_abs_diff=0.0)
    client.create_registered_model(NAME)
    return str(client.create_model_version(NAME, source="benchmark", tags=card.to_tags()).version)


def generate(log: Path, labels: Path, rows: int, labelled: float, features: int, version: str) -> int:
    """The log and the labels file; returns how many rows are labelled."""
    rng = np.random.default_rng(0)
    answer, values = rng.integers(0, 10, rows), rng.integers(0, 17, (1024, features)).astype(float)
    head = (b'{"schema_version":1,"model_name":"' + NAME.encode() + b'","model_version":"' + version.encode() +
            b'","role":"champion","subject":null,"latency_ms":1.0,"confidence":[0.9],')
    inputs = [b'"inputs":[' + orjson.dumps(row.tolist()) + b"]," for row in values]
    step = DAYS * 86400 / rows
    with open(log, "wb") as f:
        for n in range(rows):
            f.write(head + b'"request_id":"%s","time":%.3f,' % (_uuid(n), T0 + n * step) + inputs[n % 1024] +
                    b'"labels":["%d"]}\n' % answer[n])
    chosen = rng.permutation(rows)[:int(rows * labelled)]  # labels arrive in any order
    truth = np.where(rng.random(len(chosen)) < 0.95, answer[chosen], (answer[chosen] + 1) % 10)
    with open(labels, "wb") as f:
        f.write(b"request_id,row,label\n")
        f.writelines(b"%s,0,%d\n" % (_uuid(n), t) for n, t in zip(chosen.tolist(), truth.tolist()))
    return len(chosen)


def _uuid(n: int) -> bytes:
    text = f"{n:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}".encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--labelled", type=float, default=0.5, help="share of the rows with a true label")
    parser.add_argument("--features", type=int, default=64, help="values per logged row (the digits have 64)")
    args = parser.parse_args()
    os.environ.update(TELEMETRY_OFF)
    with tempfile.TemporaryDirectory(prefix="mlops-nb-monitor-labels-") as tmp:
        root, started = Path(tmp), time.perf_counter()
        log, labels = root / "predictions.jsonl", root / "labels.csv"
        labelled = generate(log, labels, args.rows, args.labelled, args.features, project(root, args.features))
        sizes = [p.stat().st_size / 2**20 for p in (log, labels)]
        print(f"== {args.rows:,} rows ({sizes[0]:.0f} MiB), {labelled:,} labels ({sizes[1]:.0f} MiB) generated in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        command = [str(BIN / "mlops-nb"), "monitor", "--log", str(log), "--labels", str(labels), "--json"]
        env = {**os.environ, **TELEMETRY_OFF, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        env = {k: v for k, v in env.items() if not k.startswith("MLOPS_NB_")}
        measured = root / "measured.json"
        result = subprocess.run([sys.executable, "-c", MEASURE, str(measured), *command], cwd=root, env=env,
                                capture_output=True, text=True)
        figures = json.loads(measured.read_text())
    if figures["exit"] not in (0, 1):
        raise RuntimeError(f"`{' '.join(command)}` exited {figures['exit']}: {result.stderr[-2000:]}")
    verdict = json.loads(result.stdout)
    joined = verdict["joined"]
    assert (joined["answered_rows"], joined["labelled_rows"]) == (args.rows, labelled), joined
    print(f"## mlops-nb monitor --labels: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; wall "
          "time includes start-up (imports, registry)\n")
    columns = ["rows", "labels", "log MiB", "labels MiB", "wall s", "CPU s", "check s", "rows/s", "peak RSS MiB",
               "windows", "status"]
    values = [f"{args.rows:,}", f"{labelled:,}", f"{sizes[0]:.0f}", f"{sizes[1]:.0f}", f"{figures['wall_s']:.1f}",
              f"{figures['cpu_s']:.1f}", f"{joined['seconds']:.1f}", f"{args.rows / figures['wall_s']:,.0f}",
              f"{figures['peak_rss_kib'] / 1024:.0f}", str(sum(len(v["windows"]) for v in verdict["versions"])),
              verdict["status"]]
    for line in (columns, ["---"] * len(columns), values):
        print("| " + " | ".join(line) + " |")


if __name__ == "__main__":
    main()
