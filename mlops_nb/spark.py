"""Spark scoring: a registered version's ONNX bytes broadcast once, one ScoringCore per executor process (reused
across batches), Arrow batches scored with `mapInPandas`; rows that fail validation kept apart with their reason."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlops_nb.contracts import ModelCard
from mlops_nb.registry import CHAMPION, fetch_version
from mlops_nb.settings import Settings, load_settings

__all__ = ["SparkScored", "score_dataframe", "spark_session", "predict_with_spark"]

REASON = "reason"  # null on a scored row; on a rejected one, its first problem, naming the column
_CORES: dict[str, object] = {}  # ONNX SHA-256 -> this executor process's ScoringCore


@dataclass(frozen=True)
class SparkScored:
    """One scoring pass, evaluated when an output is read. `scored`: the input's columns plus label, confidence,
    p_<class> and model_version; `rejected`: the input's columns plus `reason`. Reading both scores twice unless
    `all` is persisted first (as `predict_with_spark` does)."""

    all: object  # pyspark.sql.DataFrame: the input's columns, the added ones, and `reason`
    card: ModelCard
    input_columns: list[str]

    @property
    def scored(self):
        from pyspark.sql import functions as F

        return self.all.where(F.col(REASON).isNull()).drop(REASON)

    @property
    def rejected(self):
        from pyspark.sql import functions as F

        return self.all.where(F.col(REASON).isNotNull()).select(*self.input_columns, REASON)


def spark_session(master: str | None = None, app: str = "mlops-nb predict"):
    """The active Spark session, or a new one: `master` when given, else what spark-submit set, else local[*]
    (whose Python workers run this interpreter unless PYSPARK_PYTHON says otherwise)."""
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app)
    if master or not SparkConf().contains("spark.master"):
        builder = builder.master(master or "local[*]")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return builder.getOrCreate()


def _core(model: bytes, card_json: str):
    """This executor process's ScoringCore for the model (its ONNX file written once to a local temporary folder;
    one ONNX Runtime thread: Spark runs one Python worker per core)."""
    from mlops_nb.serving.scoring import ScoringCore

    key = hashlib.sha256(model).hexdigest()
    if key not in _CORES:
        folder = Path(tempfile.mkdtemp(prefix="mlops-nb-spark-"))
        (folder / "model.onnx").write_bytes(model)
        _CORES[key] = ScoringCore(folder, ModelCard.model_validate_json(card_json), threads=1)
    return _CORES[key]


def _features(batch: pd.DataFrame, names: list[str]) -> np.ndarray:
    """The feature columns as float64 (rows x features); NaN marks a null or a value that is not a number."""
    return np.column_stack([pd.to_numeric(batch[name], errors="coerce").to_numpy(np.float64, na_value=np.nan)
                            for name in names])


def _scored_batches(batches, model, card_json: str):
    """The pandas UDF's body: each Arrow batch of feature columns validated with the service's `row_reasons`, its
    valid rows scored by the executor's ScoringCore; the added columns (null where they do not apply)."""
    from mlops_nb.serving.scoring import row_reasons

    core = None
    for batch in batches:
        core = core or _core(model.value, card_json)
        card = core.card
        array = _features(batch, card.features)
        reasons = row_reasons(array, features=card.features, low=card.feature_min, high=card.feature_max)
        good = np.ones(len(batch), dtype=bool)
        good[list(reasons)] = False
        probabilities = np.full((len(batch), len(card.classes)), np.nan, np.float32)
        if good.any():
            probabilities[good] = core.score(array[good].astype(np.float32))
        labels = core.classes[np.nan_to_num(probabilities).argmax(axis=1)]
        labels = pd.Series(labels, dtype="Int64" if labels.dtype.kind in "iu" else "string").where(good, pd.NA)
        out = pd.DataFrame({"label": labels, "confidence": probabilities.max(axis=1),
                            **{f"p_{name}": probabilities[:, c] for c, name in enumerate(card.classes)},
                            "model_version": np.where(good, str(card.model_version), None)})
        why = np.full(len(batch), None, dtype=object)
        why[list(reasons)] = list(reasons.values())
        out[REASON] = why
        yield out


def score_dataframe(frame, *, version: str = CHAMPION, settings: Settings | None = None) -> SparkScored:
    """Score a Spark DataFrame holding the model's feature columns with a registered version (default: the
    champion): its ONNX bytes are broadcast once and scored on the executors by the service's ScoringCore, with
    its validation, in a pandas UDF over the feature columns (Arrow batches)."""
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import FloatType, LongType, StringType, StructField, StructType

    settings = settings or load_settings()
    with tempfile.TemporaryDirectory() as tmp:
        folder, card = fetch_version(settings.registry.model_name, version, Path(tmp) / "model", settings)
        model = (folder / "model.onnx").read_bytes()
    if missing := [name for name in card.features if name not in frame.columns]:
        raise ValueError(f"the DataFrame lacks {len(missing)} of the model's {card.n_features} feature columns: "
                         f"{', '.join(missing[:10])}")
    if taken := sorted(set(frame.columns) & {"label", "confidence", "model_version", REASON,
                                             *(f"p_{c}" for c in card.classes)}):
        raise ValueError(f"the DataFrame already has columns the scorer adds: {', '.join(taken)}")
    label = LongType() if isinstance(card.classes[0], int) else StringType()
    added = StructType([StructField("label", label), StructField("confidence", FloatType()),
                        *(StructField(f"p_{c}", FloatType()) for c in card.classes),
                        StructField("model_version", StringType()), StructField(REASON, StringType())])
    broadcast = frame.sparkSession.sparkContext.broadcast(model)
    card_json = card.model_dump_json()

    @pandas_udf(added)
    def predict(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return _scored_batches(batches, broadcast, card_json)

    result = "__mlops_nb_result"  # only the feature columns go to Python; the others stay in the JVM
    once = predict.asNondeterministic()  # evaluated once per row: the filters on `reason` cannot copy it
    scored = frame.withColumn(result, once(F.struct(*[F.col(f"`{name}`") for name in card.features])))
    return SparkScored(scored.select("*", f"{result}.*").drop(result), card, list(frame.columns))

def predict_with_spark(input: Path | str, output: Path | str, *, version: str = CHAMPION,
                       settings: Settings | None = None, rejected: Path | str | None = None,
                       master: str | None = None):
    """`mlops-nb predict --engine spark`: INPUT (a .parquet or .csv file or folder, on any file system Spark reads)
    scored by `score_dataframe`; OUTPUT and the rejected rows (default `<OUTPUT stem>.rejected.<ext>`) are written
    as folders of part files in the format their extension names, committed by Spark when the job succeeds (an
    existing folder is refused). Returns the same summary as the single-process scorer."""
    import time

    from mlops_nb.batch import BatchInputError, BatchSummary, FORMATS, rejected_path_for

    started = time.perf_counter()
    rejected = rejected or rejected_path_for(output)
    kinds = {str(path): FORMATS.get(Path(path).suffix.lower()) for path in (input, output, rejected)}
    if unknown := [path for path, kind in kinds.items() if kind is None]:
        raise BatchInputError(f"{', '.join(unknown)}: name .parquet or .csv paths (the extension decides the format)")
    spark = spark_session(master)
    reader = spark.read.option("header", True) if kinds[str(input)] == "csv" else spark.read
    try:
        frame = reader.format(kinds[str(input)]).load(str(input))
        result = score_dataframe(frame, version=version, settings=settings)
    except ValueError as error:
        raise BatchInputError(f"{input}: {error}") from None
    result.all.persist()  # one scoring pass for both outputs
    try:
        for rows, path in ((result.scored, output), (result.rejected, rejected)):
            writer = rows.write.mode("errorifexists")
            (writer.option("header", True) if kinds[str(path)] == "csv" else writer).format(kinds[str(path)]).save(
                str(path))
        scored, n_rejected = result.scored.count(), result.rejected.count()
    finally:
        result.all.unpersist()
    return BatchSummary(model_version=str(result.card.model_version), rows=scored + n_rejected, scored=scored,
                        rejected=n_rejected, seconds=time.perf_counter() - started, output=Path(output),
                        rejected_path=Path(rejected))
