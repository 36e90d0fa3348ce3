"""Batch scoring (`mlops-nb predict`) on the built project: the served bento's answers, bad rows, errors, the CLI."""

import json
import subprocess

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BIN, project_env, split_frame

import mlops_nb.batch
from mlops_nb.batch import BatchInputError, predict_file
from mlops_nb.registry import RegistryError, champion
from mlops_nb.settings import load_settings

COPIES = 8  # the 270-row test split, repeated: a few thousand rows, several chunks
RANGE = "is outside the allowed range [0.0, 16.0]"


@pytest.fixture(scope="module")
def table(built_project):
    """The test split repeated COPIES times with an `id` column first and the target last; the feature names."""
    frame, manifest = split_frame(built_project)
    frame = pd.concat([frame[manifest["features"] + [manifest["target"]]]] * COPIES, ignore_index=True)
    frame.insert(0, "id", [f"r{i}" for i in range(len(frame))])
    return frame, manifest["features"]


@pytest.fixture(scope="module")
def settings(built_project):
    return load_settings(built_project, environ={})


def write(frame: pd.DataFrame, path):
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, dtype={"id": str}) if path.suffix == ".csv" \
        else pd.read_parquet(path)


def read_text(path) -> pd.DataFrame:
    """A CSV file's values as the text they are, `row` as a number."""
    return pd.read_csv(path, dtype=str, keep_default_na=False).astype({"row": int})


def files(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_batch_answers_are_the_served_bentos_answers_bit_for_bit(server, table, settings, tmp_path, kind):
    url, _, _ = server
    frame, features = table
    meta = httpx.get(f"{url}/model/metadata", timeout=10).json()
    version, classes = meta["model_version"], meta["classes"]
    summary = predict_file(write(frame, tmp_path / f"in.{kind}"), tmp_path / f"out.{kind}", version=version,
                           settings=settings, chunk_rows=700, progress=False)
    assert (summary.rows, summary.scored, summary.rejected, summary.model_version) == (len(frame), len(frame), 0,
                                                                                        version)
    out, rejected = read(summary.output), read(summary.rejected_path)
    assert rejected.empty and list(rejected.columns) == ["row", *frame.columns, "reason"]
    assert list(out.columns) == ["row", "id", "target", "label", "confidence", *(f"p_{c}" for c in classes),
                                 "model_version"]
    assert out["row"].tolist() == list(range(len(frame))) and out["id"].tolist() == frame["id"].tolist()
    assert (out["model_version"].astype(str) == version).all()

    values = frame[features].to_numpy().tolist()
    bodies = [httpx.post(f"{url}/predict", json={"instances": values[i:i + 1000]}, timeout=60).json()
              for i in range(0, len(values), 1000)]
    online = [p for body in bodies for p in body["predictions"]]
    assert {body["model_version"] for body in bodies} == {version}
    assert out["label"].tolist() == [p["label"] for p in online]
    served = np.array([p["probabilities"] for p in online], dtype=np.float32)
    batch = out[[f"p_{c}" for c in classes]].to_numpy(np.float32)
    assert np.abs(batch - served).max() <= settings.export.parity_tolerance
    assert np.array_equal(batch, served)  # the same ONNX file and core: bit-identical, not just within tolerance
    assert np.array_equal(out["confidence"].to_numpy(np.float32), served.max(axis=1))
    single = [httpx.post(f"{url}/predict", json={"instances": [values[i]]}, timeout=10).json()["predictions"][0]
              for i in (0, 1, 2)]  # one row per request, as most clients send them
    assert np.array_equal(np.array([p["probabilities"] for p in single], dtype=np.float32), batch[:3])


def test_bad_csv_rows_go_to_the_rejected_file_with_a_reason_naming_the_column(table, settings, tmp_path):
    frame, features = table
    frame = frame.iloc[:1000].astype({name: object for name in features[:4]})
    frame.iloc[10, 1], frame.iloc[20, 2], frame.iloc[30, 3], frame.iloc[40, 4] = "seven", "", "17", " 1e3 "
    frame.iloc[50, 5], frame.iloc[60, 6] = -1.0, float("inf")
    source = write(frame, tmp_path / "in.csv")
    lines = source.read_text().splitlines()
    lines[70 + 2] = lines[70 + 2].rsplit(",", 3)[0]  # row 71: its last three fields cut off
    source.write_text("\n".join(lines) + "\n")
    summary = predict_file(source, tmp_path / "out.csv", settings=settings, chunk_rows=300, progress=False)
    rejected = read_text(summary.rejected_path).sort_values("row")
    expected = {10: f"{features[0]}: missing or not a number", 20: f"{features[1]}: missing or not a number",
                30: f"{features[2]}: 17.0 {RANGE}", 40: f"{features[3]}: 1000.0 {RANGE}",
                50: f"{features[4]}: -1.0 {RANGE}", 60: f"{features[5]}: must be a finite number, got inf",
                71: f"line {71 + 2} of the file has {len(frame.columns) - 3} fields; expected {len(frame.columns)}"}
    assert dict(zip(rejected["row"], rejected["reason"])) == expected
    raw = rejected.set_index("row")
    assert (raw.loc[10, features[0]], raw.loc[20, features[1]], raw.loc[30, features[2]]) == ("seven", "", "17")
    assert raw.loc[10, "id"] == "r10" and raw.loc[71, "id"] == ""  # a line that did not parse: no values
    out = read(summary.output)
    assert (summary.rows, summary.scored, summary.rejected) == (1000, 1000 - len(expected), len(expected))
    assert out["row"].tolist() == [i for i in range(1000) if i not in expected]  # every good row, in order
    assert out["id"].tolist() == [f"r{i}" for i in out["row"]]


def test_bad_parquet_values_are_rejected_and_output_columns_keep_their_types(table, settings, tmp_path):
    frame, features = table
    frame = frame.iloc[:500].copy()
    frame.iloc[5, 1], frame.iloc[6, 2], frame.iloc[7, 3], frame.iloc[8, 4] = np.nan, np.inf, 16.5, -0.5
    frame.iloc[9, 5] = np.nan
    arrow = pa.Table.from_pandas(frame, preserve_index=False)  # NaN becomes null (row 9)
    arrow = arrow.set_column(1, features[0], pa.array(frame[features[0]].to_numpy()))  # row 5: NaN, not null
    assert arrow.column(features[0]).null_count == 0 and arrow.column(features[4]).null_count == 1
    pq.write_table(arrow, tmp_path / "in.parquet", row_group_size=128)
    summary = predict_file(tmp_path / "in.parquet", tmp_path / "out.parquet", settings=settings, chunk_rows=100,
                           progress=False)
    rejected = pd.read_parquet(summary.rejected_path)
    assert dict(zip(rejected["row"], rejected["reason"])) == {
        5: f"{features[0]}: missing or not a number", 6: f"{features[1]}: must be a finite number, got inf",
        7: f"{features[2]}: 16.5 {RANGE}", 8: f"{features[3]}: -0.5 {RANGE}",
        9: f"{features[4]}: missing or not a number"}
    assert (summary.rows, summary.scored, summary.rejected) == (500, 495, 5)
    schema = pq.read_schema(summary.output)
    assert schema.field("row").type == pa.int64() and schema.field("target").type == arrow.schema.field("target").type
    assert schema.field("label").type == pa.int64() and schema.field("confidence").type == pa.float32()
    assert pq.read_schema(summary.rejected_path).field(features[0]).type == pa.float64()


def test_a_failure_midway_leaves_no_output_and_bad_arguments_are_refused(table, settings, tmp_path, monkeypatch):
    frame, _ = table
    source = write(frame, tmp_path / "in.parquet")
    calls = []
    real = mlops_nb.batch._features

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(*args)

    monkeypatch.setattr(mlops_nb.batch, "_features", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        predict_file(source, tmp_path / "out.parquet", settings=settings, chunk_rows=500, progress=False)
    assert files(tmp_path) == {"in.parquet"}  # no output, no rejected file, no temporary file
    monkeypatch.undo()
    with pytest.raises(RegistryError, match="has no version 99"):
        predict_file(source, tmp_path / "out.parquet", version="99", settings=settings)
    with pytest.raises(RegistryError, match="not a version"):
        predict_file(source, tmp_path / "out.parquet", version="latest", settings=settings)
    with pytest.raises(BatchInputError, match=r"name a \.csv or \.parquet file"):
        predict_file(source, tmp_path / "out.json", settings=settings)
    with pytest.raises(BatchInputError, match="does not exist"):
        predict_file(tmp_path / "nothing.csv", tmp_path / "out.csv", settings=settings)
    (tmp_path / "junk.parquet").write_text("id,pixel\n1,2\n")
    with pytest.raises(BatchInputError, match="not a readable PARQUET file"):
        predict_file(tmp_path / "junk.parquet", tmp_path / "out.csv", settings=settings)
    assert files(tmp_path) == {"in.parquet", "junk.parquet"}


def predict_cli(root, *args):
    return subprocess.run([str(BIN / "mlops-nb"), "predict", *map(str, args)], cwd=root, env=project_env(root),
                          capture_output=True, text=True, timeout=300)


def test_cli_refuses_an_input_missing_a_feature_column_with_exit_2_and_writes_nothing(built_project, table,
                                                                                     tmp_path):
    frame, features = table
    write(frame.drop(columns=[features[7]]).iloc[:50], tmp_path / "in.csv")
    result = predict_cli(built_project, tmp_path / "in.csv", tmp_path / "out.parquet")
    assert result.returncode == 2, result.stderr
    assert f"lacks 1 of the model's {len(features)} feature columns: {features[7]}" in result.stderr
    assert files(tmp_path) == {"in.csv"}


def test_cli_scores_a_file_says_what_it_rejected_and_gives_json_to_machines(built_project, table, settings,
                                                                             tmp_path):
    frame, features = table
    frame = frame.iloc[:300].astype({features[0]: object})
    frame.iloc[3, 1] = "n/a"
    write(frame, tmp_path / "in.csv")
    result = predict_cli(built_project, tmp_path / "in.csv", tmp_path / "out.parquet", "--json", "--chunk-rows", 128)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    current = str(champion(settings.registry.model_name, settings).version)
    assert {k: summary[k] for k in ("rows", "scored", "rejected", "model_version")} == {
        "rows": 300, "scored": 299, "rejected": 1, "model_version": current}
    assert summary["output"] == str(tmp_path / "out.parquet") and summary["rows_per_s"] > 0
    assert summary["rejected_path"] == str(tmp_path / "out.rejected.parquet")
    assert f"1 of 300 rows REJECTED (not scored), each with its reason: {tmp_path / 'out.rejected.parquet'}" \
        in result.stderr
    assert pd.read_parquet(tmp_path / "out.rejected.parquet")["reason"].tolist() == [
        f"{features[0]}: missing or not a number"]

    result = predict_cli(built_project, tmp_path / "in.csv", tmp_path / "out.csv", "--model", current,
                         "--rejected", tmp_path / "bad-rows.csv")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"300 rows: 299 scored -> {tmp_path / 'out.csv'}, 1 rejected -> "
                                    f"{tmp_path / 'bad-rows.csv'}; ")
    assert result.stdout.rstrip().endswith(f"rows/s; model version {current}")
    assert read(tmp_path / "out.csv")["label"].tolist() == pd.read_parquet(tmp_path / "out.parquet")["label"].tolist()
    assert files(tmp_path) == {"in.csv", "out.parquet", "out.rejected.parquet", "out.csv", "bad-rows.csv"}
