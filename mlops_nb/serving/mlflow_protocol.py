"""MLflow's scoring protocol, as `mlflow models serve` speaks it: `POST /invocations` with JSON (`dataframe_split`,
`dataframe_records`, `instances`, `inputs`) or `text/csv`, answered `{"predictions": {output name: [...]}}`."""

from __future__ import annotations

import csv
import io

import numpy as np
import orjson

from mlops_nb.serving.codecs import Refused, Rows, json_payload, numbers_only
from mlops_nb.serving.scoring import RowError

__all__ = ["FORMATS", "MlflowCodec"]

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
ONE_FORMAT = f"send a JSON object with exactly one of {', '.join(FORMATS)}"
ERROR_CODES = {401: "UNAUTHENTICATED", 500: "INTERNAL_ERROR", 503: "TEMPORARILY_UNAVAILABLE"}  # else BAD_REQUEST


def _media(content_type: bytes) -> bytes:
    """The media type of a Content-Type, refused (415, as MLflow does) with a charset other than UTF-8 or any other
    parameter."""
    media, *parameters = (part.strip() for part in content_type.split(b";"))
    for parameter in parameters:
        key, _, value = parameter.partition(b"=")
        if key.strip().lower() != b"charset" or value.strip().strip(b'"').lower() not in (b"utf-8", b"utf8"):
            raise Refused(415, "unsupported_media_type", f"unsupported Content-Type parameter "
                                                         f"{parameter.decode('latin-1')!r}: only charset=utf-8")
    return media.lower()


def _cell(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value  # validation names it: "must be a number, got str ..."


class MlflowCodec:
    """`POST /invocations`. Columns are positional, as MLflow takes them for this tensor-signature model, except
    records keyed by the model's features (taken by name); dataframe_split or CSV columns named by the features in
    another order are refused rather than scored in the wrong places."""

    def __init__(self, core) -> None:
        self.features = core.card.features

    def parse(self, body: bytes, headers: dict) -> Rows:
        media = _media(headers.get(b"content-type", b"application/json"))
        if media == b"text/csv":
            return self._csv(body)
        if media != b"application/json":
            raise Refused(415, "unsupported_media_type", "send application/json (dataframe_split, dataframe_records, "
                                                         "instances or inputs) or text/csv")
        payload = json_payload(body)
        if not isinstance(payload, dict) or len(found := [name for name in FORMATS if name in payload]) != 1:
            keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
            raise Refused(400, "invalid_input", f"{ONE_FORMAT}; got {keys}")
        name, value = found[0], payload[found[0]]
        if name == "dataframe_split":
            if not isinstance(value, dict) or not value.keys() <= {"columns", "index", "data"}:
                raise Refused(400, "invalid_input", 'dataframe_split: must be an object {"columns": [...], '
                                                    '"data": [[...], ...]} (and optionally "index")')
            self._check_columns(value.get("columns"), "dataframe_split.columns")
            return Rows(value.get("data"), False, "dataframe_split.data")
        if name == "dataframe_records":
            return Rows(self._records(value), False, "dataframe_records")
        return Rows(value, numbers_only(body), name)

    def _check_columns(self, columns, field: str) -> None:
        """Refuse columns that are the model's features in another order (MLflow would score them positionally)."""
        if columns is None:
            return
        if not isinstance(columns, list) or len(columns) != len(self.features):
            reason = f"must be a list of {len(self.features)} column names"
            raise Refused(400, "invalid_input", f"{field}: {reason}", [RowError(field, reason)])
        if columns != self.features and sorted(map(str, columns)) == sorted(self.features):
            reason = f"the model's features in another order; send them in this order: {', '.join(self.features)}"
            raise Refused(400, "invalid_input", f"{field}: {reason}", [RowError(field, reason)])

    def _records(self, records) -> list:
        """Rows of `dataframe_records`: by name when the keys are the model's features, else by the first record's
        key order (as MLflow takes them); every record has the same keys."""
        if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
            raise Refused(400, "invalid_input", "dataframe_records: must be a non-empty list of objects "
                                                "{column: value}")
        keys = records[0].keys()
        errors = [RowError(f"dataframe_records[{i}]", f"has columns {sorted(r)}; expected {sorted(keys)}", i)
                  for i, r in enumerate(records) if r.keys() != keys][:20]
        if errors:
            raise Refused(400, "invalid_input", "; ".join(f"{e.field}: {e.reason}" for e in errors), errors)
        columns = self.features if keys == set(self.features) else list(keys)
        return [[record[name] for name in columns] for record in records]

    def _csv(self, body: bytes) -> Rows:
        """A header line, then one row per line (as `pandas.DataFrame.to_csv(index=False)` writes it)."""
        try:
            lines = csv.reader(io.StringIO(body.decode("utf-8")))
            header = next(lines, None)
            rows = [[_cell(value) for value in line] for line in lines if line]
        except (UnicodeDecodeError, csv.Error) as error:
            raise Refused(400, "invalid_input", f"the body is not UTF-8 CSV: {error}") from None
        if header is None:
            raise Refused(400, "invalid_input", "the CSV is empty: send a header line, then one line per row")
        self._check_columns(header, "csv header")
        return Rows(rows, all(isinstance(value, float) for row in rows for value in row), "csv rows")

    @staticmethod
    def encode(core, probabilities: np.ndarray, request_id: str, fallback: dict | None = None,
               request: dict | None = None) -> tuple[bytes, list]:
        """MLflow's answer for this ONNX model: the output by name, float32 values written as MLflow writes them (as
        doubles), so a client sees the same numbers."""
        return orjson.dumps({"predictions": {core.output_names[0]: probabilities.astype(np.float64)}},
                            option=orjson.OPT_SERIALIZE_NUMPY), []

    @staticmethod
    def error(refused: Refused, request_id: str) -> bytes:
        """MLflow's error body (`error_code`, `message`) with the project's fields beside it."""
        code = ERROR_CODES.get(refused.status, "BAD_REQUEST")
        return orjson.dumps({"error_code": code, **refused.fields(request_id)})
