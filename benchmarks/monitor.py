"""Drift monitor benchmark: `mlops-nb monitor` on a generated prediction log of 1M logged rows.

    .venv/bin/python benchmarks/monitor.py [--rows 1000000] [--rows-per-record 1] [--report]

Run after a build (it needs products/ and the registered version). The log resamples the build's test-split rows
(seeded, clean traffic) as champion records of the registered version, `--rows-per-record` rows each (1 = the
worst case: one JSON line per row) with the served variant's answers, in a temporary folder, never committed.
`mlops-nb monitor --log FILE --json --no-report` (with `--report`: the report notebook too) runs as a subprocess started from a small wrapper (as benchmarks/batch.py does): wall time (start-up and the
reference fetch included), rows/s, and the command's peak RSS (`os.wait4`'s ru_maxrss of that process alone).
The monitor writes its own evidence (products/evidence/monitor.json) and tags the version.
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

from mlops_nb.onnx_export import onnx_predict, ort_session
from mlops_nb.pipeline import TELEMETRY_OFF
from mlops_nb.products import read_json
from mlops_nb.research.data import read_snapshot
from mlops_nb.settings import load_settings

sys.path.insert(0, str(Path(__file__).parent))
from batch import BIN, MEASURE  # noqa: E402


def generate(settings, rows: int, per_record: int, path: Path) -> None:
    """A clean prediction log of `rows` rows: test-split rows resampled, `per_record` rows per champion record."""
    products = settings.products_dir
    manifest, split = read_json(products / "snapshot/manifest.json"), read_json(products / "snapshot/split.json")
    reg = read_json(products / "register/registration.json")
    frame = read_snapshot(manifest["path"], manifest["sha256"]).iloc[split["test"]]
    x = frame.drop(columns=[manifest["target"]]).to_numpy(float)
    probabilities = onnx_predict(ort_session(read_json(products / "export/export.json")["served_path"]), x)
    y, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)  # the served variant's answers
    fragments = [orjson.dumps(row.tolist()) for row in x]
    idx = np.random.default_rng(0).integers(0, len(x), rows)
    head = (b'{"schema_version":1,"model_name":' + orjson.dumps(reg["model_name"]) + b',"model_version":"'
            + str(reg["version"]).encode() + b'","role":"champion","subject":null,"latency_ms":1.0,')
    with open(path, "wb") as f:
        for n, start in enumerate(range(0, rows, per_record)):
            chosen = idx[start:start + per_record]
            f.write(head + b'"request_id":"r%d","time":%d,"inputs":[' % (n, 1_700_000_000 + n)
                    + b",".join(fragments[i] for i in chosen) + b'],"labels":'
                    + orjson.dumps([manifest["classes"][y[i]] for i in chosen]) + b',"confidence":'
                    + orjson.dumps([float(confidence[i]) for i in chosen]) + b"}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rows-per-record", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="also render the HTML report (papermill, a kernel): "
                        "peak RSS is then the command's, the kernel's own not counted")
    args = parser.parse_args()
    os.environ.update(TELEMETRY_OFF)
    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="mlops-nb-monitor-") as tmp:
        log = Path(tmp) / "predictions.jsonl"
        started = time.perf_counter()
        generate(settings, args.rows, args.rows_per_record, log)
        size = log.stat().st_size
        print(f"== {args.rows:,} rows ({size / 2**20:.0f} MiB) generated in {time.perf_counter() - started:.1f} s",
              file=sys.stderr, flush=True)
        command = [str(BIN / "mlops-nb"), "monitor", "--log", str(log), "--json", *([] if args.report else
                                                                                   ["--no-report"])]
        env = {**os.environ, **TELEMETRY_OFF, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        measured = Path(tmp) / "measured.json"
        result = subprocess.run([sys.executable, "-c", MEASURE, str(measured), *command], cwd=settings.root, env=env,
                                capture_output=True, text=True)
        figures = json.loads(measured.read_text())
    if figures["exit"] not in (0, 1):
        raise RuntimeError(f"`{' '.join(command)}` exited {figures['exit']}: {result.stderr[-2000:]}")
    verdict = json.loads(result.stdout)
    assert verdict["window"]["rows"] == args.rows, verdict["window"]
    print(f"## mlops-nb monitor: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; wall time "
          "includes start-up (imports, reference fetch)\n")
    print("| rows | rows/record | report | log MiB | wall s | monitor s | rows/s | peak RSS MiB | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.rows:,} | {args.rows_per_record} | {'yes' if args.report else 'no'} | {size / 2**20:.0f} | "
          f"{figures['wall_s']:.1f} | "
          f"{verdict['window']['seconds']:.1f} | {args.rows / figures['wall_s']:,.0f} | "
          f"{figures['peak_rss_kib'] / 1024:.0f} | {verdict['status']} |")


if __name__ == "__main__":
    main()
