"""Batch scoring benchmark: `mlops-nb predict` on generated CSV and Parquet files of 250k, 1M and 2M rows.

    .venv/bin/python benchmarks/batch.py [--rows 250000,1000000,2000000] [--bad-share 0.01] [--chunk-rows 65536]
                                         [--formats parquet,csv]

Run after a build (it needs products/ and the registry's champion); prints figures, not a test. For each size it
resamples the build's test-split rows (with replacement, seeded) into a Parquet file (numeric feature columns, one
row group per 1Mi rows as pyarrow writes by default) and a CSV file with the same rows, in a temporary folder;
`--bad-share` of the rows get one bad value in a random feature (Parquet: null, NaN, infinity, out of range; CSV:
a word, an empty field, out of range). Each file is scored by `mlops-nb predict --json` as a subprocess: wall time
(start-up included), rows/s over that wall time, and the command's peak RSS (`os.wait4`'s ru_maxrss of that
process alone, started from a small wrapper process); the run must score or reject every row and reject exactly
the bad ones. Peak RSS over the sizes shows whether memory grows with the input. Results also go to
products/evidence/batch-benchmark.json.
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
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from mlops_nb.pipeline import TELEMETRY_OFF
from mlops_nb.products import read_json, write_json
from mlops_nb.research.data import read_snapshot
from mlops_nb.settings import Settings, load_settings

BIN = Path(sys.executable).parent
SEED = 0
BAD_NUMBERS = (None, float("nan"), float("inf"), 17.0, -1.0)  # Parquet: null, NaN, infinity, out of range
BAD_TEXT = ("abc", "", "17", "-1")  # CSV: a word, an empty field, out of range


def test_split(settings: Settings):
    """The build's test split: the feature table, the target and the feature names."""
    products = settings.products_dir
    manifest = read_json(products / "snapshot/manifest.json")
    split = read_json(products / "snapshot/split.json")
    frame = read_snapshot(manifest["path"], manifest["sha256"]).iloc[split["test"]]
    return frame, manifest["target"], manifest["features"]


def generate(settings: Settings, rows: int, bad_share: float, folder: Path) -> tuple[dict[str, Path], int]:
    """`rows` resampled test-split rows with an `id` and the target, as Parquet and CSV; returns the paths and how
    many rows hold a bad value."""
    frame, target, features = test_split(settings)
    rng = np.random.default_rng(SEED)
    pick = rng.integers(0, len(frame), rows)
    values = frame[features].to_numpy(np.float64)[pick]
    bad_rows = rng.choice(rows, int(rows * bad_share), replace=False)
    bad_columns = rng.integers(0, len(features), len(bad_rows))
    columns = {"id": pa.array(np.arange(rows, dtype=np.int64)), target: pa.array(frame[target].to_numpy()[pick])}
    numeric, text = dict(columns), dict(columns)
    kinds = np.arange(len(bad_rows))  # the n-th bad row gets the n-th kind of bad value, in turn
    for j, name in enumerate(features):
        hit = bad_columns == j
        order = np.argsort(bad_rows[hit])  # replace_with_mask takes replacements in row order
        where, kind = bad_rows[hit][order], kinds[hit][order]
        mask = pa.array(np.isin(np.arange(rows), where))
        numeric[name] = pc.replace_with_mask(pa.array(values[:, j]), mask, pa.array(
            [BAD_NUMBERS[k % len(BAD_NUMBERS)] for k in kind], pa.float64()))
        text[name] = pc.replace_with_mask(pc.cast(pa.array(values[:, j]), pa.string()), mask, pa.array(
            [BAD_TEXT[k % len(BAD_TEXT)] for k in kind], pa.string()))
    paths = {"parquet": folder / f"rows-{rows}.parquet", "csv": folder / f"rows-{rows}.csv"}
    pq.write_table(pa.table(numeric), paths["parquet"], row_group_size=131_072)  # several row groups, as Spark and
    # other writers make: Spark splits a file by row group (one group would be one task)
    pa_csv.write_csv(pa.table(text), paths["csv"], pa_csv.WriteOptions(quoting_style="none"))
    return paths, len(bad_rows)


# Runs the command and writes its wall time and rusage to argv[1]. A process forked from this benchmark would
# report at least this benchmark's own peak RSS (Linux keeps a process's peak across fork and exec), so the command
# is started from this small process instead, and wait4 reports the command alone.
MEASURE = """import json, os, subprocess, sys, time
started = time.perf_counter()
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"wall_s": time.perf_counter() - started, "exit": os.waitstatus_to_exitcode(status),
               "peak_rss_kib": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime}, f)
"""


def score(path: Path, output: Path, settings: Settings, chunk_rows: int) -> dict:
    """`mlops-nb predict --json` on `path` as a subprocess: its summary, wall time, CPU time and peak RSS."""
    command = [str(BIN / "mlops-nb"), "predict", str(path), str(output), "--json", "--chunk-rows", str(chunk_rows)]
    env = {**os.environ, **TELEMETRY_OFF, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    measured = output.with_name("measured.json")
    result = subprocess.run([sys.executable, "-c", MEASURE, str(measured), *command], cwd=settings.root, env=env,
                            capture_output=True, text=True)
    figures = json.loads(measured.read_text())
    if result.returncode != 0 or figures["exit"] != 0:
        raise RuntimeError(f"`{' '.join(command)}` exited {figures['exit']}: {result.stderr[-2000:]}")
    return {"summary": json.loads(result.stdout), "wall_s": figures["wall_s"],
            "peak_rss_mib": figures["peak_rss_kib"] / 1024, "cpu_s": figures["cpu_s"], "bytes": path.stat().st_size}


def int_list(text: str) -> list[int]:
    """Parse a comma-separated list of positive integers."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int_list, default=[250_000, 1_000_000, 2_000_000], help="file sizes")
    parser.add_argument("--bad-share", type=float, default=0.01, help="share of rows with one bad value")
    parser.add_argument("--chunk-rows", type=int, default=65536, help="passed to `mlops-nb predict`")
    parser.add_argument("--formats", default="parquet,csv", help="parquet,csv")
    args = parser.parse_args()
    os.environ.update(TELEMETRY_OFF)
    settings = load_settings()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    records = []
    with tempfile.TemporaryDirectory(prefix="mlops-nb-batch-") as tmp:
        for rows in args.rows:
            started = time.perf_counter()
            paths, bad = generate(settings, rows, args.bad_share, Path(tmp))
            print(f"== {rows:,} rows ({bad:,} with a bad value) generated in {time.perf_counter() - started:.1f} s",
                  file=sys.stderr, flush=True)
            for kind in formats:
                result = score(paths[kind], Path(tmp) / f"scored-{rows}.{kind}", settings, args.chunk_rows)
                summary = result["summary"]
                if (summary["rows"], summary["rejected"], summary["scored"]) != (rows, bad, rows - bad):
                    raise AssertionError(f"{kind} {rows}: expected {rows} rows, {bad} rejected; got {summary}")
                record = {"format": kind, "rows": rows, "rejected": bad, "chunk_rows": args.chunk_rows,
                          "input_mib": result["bytes"] / 2**20, "wall_s": result["wall_s"],
                          "rows_per_s": rows / result["wall_s"], "peak_rss_mib": result["peak_rss_mib"],
                          "cpu_s": result["cpu_s"], "command_seconds": summary["seconds"],
                          "command_rows_per_s": summary["rows_per_s"], "model_version": summary["model_version"]}
                records.append(record)
                print(f"  {kind:<8} {rows:>9,} rows ({record['input_mib']:.0f} MiB): {record['wall_s']:.1f} s wall, "
                      f"{record['rows_per_s']:,.0f} rows/s, peak RSS {record['peak_rss_mib']:.0f} MiB, "
                      f"{bad:,} rejected", file=sys.stderr, flush=True)
                for stale in Path(tmp).glob("scored-*"):
                    stale.unlink()
            for path in paths.values():
                path.unlink()
    print(f"## mlops-nb predict: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, chunk "
          f"{args.chunk_rows} rows, {args.bad_share:.1%} bad rows; wall time includes start-up (imports, model "
          "fetch)\n")
    print("| format | rows | input MiB | wall s | rows/s | peak RSS MiB | rejected |")
    print("|---|---|---|---|---|---|---|")
    for r in records:
        print(f"| {r['format']} | {r['rows']:,} | {r['input_mib']:.0f} | {r['wall_s']:.1f} | {r['rows_per_s']:,.0f} | "
              f"{r['peak_rss_mib']:.0f} | {r['rejected']:,} |")
    evidence = settings.products_dir / "evidence/batch-benchmark.json"
    write_json(evidence, {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(),
                          "bad_share": args.bad_share, "chunk_rows": args.chunk_rows, "results": records})
    print(f"\nresults: {evidence}")


if __name__ == "__main__":
    main()
