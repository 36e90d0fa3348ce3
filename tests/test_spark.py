"""Spark scoring proved by the engine itself: a local[2] Spark session scores a million generated rows written as
Parquet, equal to the single-process scorer on every row and to the served API on a sample; bad rows come out
apart with their reasons."""

import importlib.util
import json
import os
import subprocess

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BIN, bento_tag, project_env, split_frame

from mlops_nb.batch import predict_file
from mlops_nb.serving.bento import served
from mlops_nb.settings import load_settings

pytestmark = pytest.mark.engines
if importlib.util.find_spec("pyspark") is None:
    message = 'pyspark is the `spark` extra: pip install -e ".[cpu,dev,spark]" -c requirements.lock.txt'
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)

ROWS = 1_000_000
BAD = {"nan": 10_007, "above": 10_009, "null": 99_991}  # kind -> every how many rows one is bad


@pytest.fixture(scope="module")
def rows_file(built_project, tmp_path_factory):
    """ROWS rows drawn from the test split, each value moved by -1, 0 or +1 within the bounds, with an `id`;
    every BAD[kind]-th row broken in one feature: NaN, above the bounds, or null. Written as Parquet."""
    frame, manifest = split_frame(built_project)
    features = manifest["features"]
    rng = np.random.default_rng(18)
    base = frame[features].to_numpy(np.float64)
    values = np.clip(base[rng.integers(0, len(base), ROWS)] + rng.integers(-1, 2, (ROWS, len(features))), 0, 16)
    broken = {kind: np.arange(every - 1, ROWS, every) for kind, every in BAD.items()}
    values[broken["nan"], 3] = np.nan
    values[broken["above"], 5] = 99.0
    columns = {"id": pa.array(np.arange(ROWS))}
    for j, name in enumerate(features):
        mask = np.zeros(ROWS, dtype=bool)
        if j == 7:
            mask[broken["null"]] = True
        columns[name] = pa.array(values[:, j], mask=mask)
    path = tmp_path_factory.mktemp("spark") / "rows.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=131_072)
    return path, features, broken


def test_spark_scores_a_million_rows_as_the_single_process_scorer_and_the_served_api_do(built_project, rows_file,
                                                                                      tmp_path):
    path, features, broken = rows_file
    out, rejected = tmp_path / "scored.parquet", tmp_path / "scored.rejected.parquet"
    result = spark_predict(built_project, path, out, "--json", master="local[2]")
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)
    bad_ids = np.unique(np.concatenate(list(broken.values())))
    assert (summary["rows"], summary["scored"], summary["rejected"]) == (ROWS, ROWS - len(bad_ids), len(bad_ids))
    print(f"spark local[2]: {summary['rows']:,} rows in {summary['seconds']:.1f} s "
          f"({summary['rows_per_s']:,.0f} rows/s)")

    spark = pq.read_table(out, columns=["id", "label", "model_version"]).sort_by("id")
    assert spark.num_rows == ROWS - len(bad_ids)
    single = predict_file(path, tmp_path / "single.parquet", settings=load_settings(built_project, environ={}),
                          progress=False)
    local = pq.read_table(single.output, columns=["id", "label"]).sort_by("id")
    assert spark["id"].equals(local["id"]) and spark["label"].equals(local["label"])  # every row
    assert set(spark["model_version"].unique().to_pylist()) == {summary["model_version"]}

    refused = pq.read_table(rejected).sort_by("id")
    assert refused["id"].to_pylist() == bad_ids.tolist()
    reasons = dict(zip(refused["id"].to_pylist(), refused["reason"].to_pylist()))
    assert reasons[broken["nan"][0]] == f"{features[3]}: missing or not a number"
    assert reasons[broken["above"][0]] == f"{features[5]}: 99.0 is outside the allowed range [0.0, 16.0]"
    assert reasons[broken["null"][0]] == f"{features[7]}: missing or not a number"

    sample = np.random.default_rng(0).choice(spark.num_rows, 256, replace=False)
    ids = spark["id"].take(sample).to_numpy()
    rows = pq.read_table(path, columns=features).take(ids).to_pandas().to_numpy().tolist()
    env = project_env(built_project, MLOPS_NB_MONITORING_PREDICTION_LOG=str(tmp_path / "predictions.jsonl"))
    with served(bento_tag(built_project), cwd=built_project, env=env) as url:
        answer = httpx.post(f"{url}/predict", json={"instances": rows}, timeout=60).json()
    assert [p["label"] for p in answer["predictions"]] == spark["label"].take(sample).to_pylist()


def spark_predict(root, *args, master="local[1]"):
    """`mlops-nb predict --engine spark ARGS` in the project at `root`."""
    return subprocess.run([str(BIN / "mlops-nb"), "predict", "--engine", "spark", "--spark-master", master,
                           *map(str, args)], cwd=root, env=project_env(root), capture_output=True, text=True,
                          timeout=900)


def test_bad_inputs_are_refused_with_a_message_and_no_output(built_project, tmp_path):
    few = tmp_path / "few.parquet"
    pq.write_table(pa.table({"id": [1, 2], "label": ["a", "b"]}), few)
    out = tmp_path / "out.parquet"
    result = spark_predict(built_project, few, out)
    assert result.returncode == 2 and "lacks 64 of the model's 64 feature columns" in result.stderr
    result = spark_predict(built_project, tmp_path / "none.parquet", out)
    assert result.returncode == 2 and "none.parquet" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    taken = tmp_path / "taken.rejected.csv"
    taken.mkdir()
    result = spark_predict(built_project, few, tmp_path / "taken.csv")
    assert result.returncode == 2 and f"{taken} already exist" in result.stderr
    assert not (tmp_path / "taken.csv").exists()


def test_the_library_scores_a_dataframe_of_text_columns_and_names_each_bad_value(built_project):
    from mlops_nb.spark import score_dataframe, spark_session

    frame, manifest = split_frame(built_project)
    features = manifest["features"]
    text = frame[features].head(4).astype(int).astype(str)
    text.iloc[1, 2], text.iloc[3, 0] = "seven", None
    spark = spark_session("local[1]")
    try:
        result = score_dataframe(spark.createDataFrame(text.assign(key=range(4))),
                                 settings=load_settings(built_project, environ={}))
        scored = result.scored.toPandas().sort_values("key")
        rejected = result.rejected.toPandas().sort_values("key")
    finally:
        spark.stop()
    assert scored["key"].tolist() == [0, 2] and rejected["key"].tolist() == [1, 3]
    assert rejected["reason"].tolist() == [f"{features[2]}: missing or not a number",
                                           f"{features[0]}: missing or not a number"]
    assert set(scored["model_version"]) == {str(result.card.model_version)}
    probabilities = scored[[f"p_{c}" for c in result.card.classes]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert scored["label"].tolist() == [result.card.classes[i] for i in probabilities.argmax(axis=1)]
