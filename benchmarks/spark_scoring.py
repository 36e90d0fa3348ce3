"""Spark scoring beside MLflow's anchor: the same Parquet scored in one Spark session by `mlflow.pyfunc.spark_udf`
of the registered version and by mlops-nb's Spark scorer, and by the single-process `mlops-nb predict`.

    .venv/bin/python benchmarks/spark_scoring.py [--rows 1000000] [--master local[2]] [--repeats 3]

Run after a build (it needs products/ and the registry's champion); prints figures and ratios, not a test. The
Parquet file holds `--rows` resampled test-split rows (benchmarks/batch.py's generator, no bad rows). Each Spark
run reads the file and writes every output row to Spark's `noop` sink (the work without the disk): spark_udf's
probabilities column; mlops-nb's one pass (validation, scoring, label, confidence, probabilities, version,
reason). Best of `--repeats` after one warm-up run each. The single-process scorer is
`mlops-nb predict` as a subprocess (start-up included). Results go to products/evidence/spark-benchmark.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from batch import generate, score

from mlops_nb.pipeline import TELEMETRY_OFF
from mlops_nb.products import write_json
from mlops_nb.registry import CHAMPION, fetch_version
from mlops_nb.settings import load_settings
from mlops_nb.spark import score_dataframe, spark_session


def timed(run, repeats: int) -> float:
    """Best wall time of `repeats` runs of `run`, after one warm-up run."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(TELEMETRY_OFF)
    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="mlops-nb-spark-") as tmp:
        paths, _ = generate(settings, args.rows, 0.0, Path(tmp))
        _, card = fetch_version(settings.registry.model_name, CHAMPION, Path(tmp) / "model", settings)
        spark = spark_session(args.master, app="mlops-nb spark benchmark")
        import mlflow
        from pyspark.sql import functions as F

        mlflow.set_tracking_uri(settings.tracking_uri)
        udf = mlflow.pyfunc.spark_udf(spark, f"models:/{card.model_name}/{card.model_version}",
                                      result_type="struct<probabilities: array<float>>", env_manager="local")
        frame = spark.read.parquet(str(paths["parquet"]))
        anchor = frame.withColumn("probabilities", udf(F.array(*[F.col(f"`{name}`") for name in card.features])))

        ours = score_dataframe(frame, version=str(card.model_version), settings=settings)
        seconds = {name: timed(lambda: rows.write.format("noop").mode("overwrite").save(), args.repeats)
                   for name, rows in (("mlflow.pyfunc.spark_udf", anchor), ("mlops-nb Spark scorer", ours.all))}
        assert ours.rejected.count() == 0
        spark.stop()
        single = score(paths["parquet"], Path(tmp) / "single.parquet", settings, 65536)
        seconds["mlops-nb predict (one process)"] = single["wall_s"]
    rates = {name: args.rows / s for name, s in seconds.items()}
    anchor_rate = rates["mlflow.pyfunc.spark_udf"]
    print(f"## Spark scoring, {args.rows:,} rows of Parquet, master {args.master}, best of {args.repeats}, "
          f"{os.cpu_count()} CPUs\n")
    print("| engine | seconds | rows/s | / spark_udf |\n|---|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s:.2f} | {rates[name]:,.0f} | {rates[name] / anchor_rate:.2f}x |")
    evidence = settings.products_dir / "evidence/spark-benchmark.json"
    write_json(evidence, {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": args.rows, "master": args.master,
                          "repeats": args.repeats, "seconds": seconds, "rows_per_s": rates,
                          "model_version": str(card.model_version)})
    print(f"\nresults: {evidence}")


if __name__ == "__main__":
    main()
