"""Batch scoring (`mlops-nb predict`): a CSV or Parquet file, in chunks, through the registered ONNX file and the
service's scoring core; scored rows to one file, rejected rows with their reason to another, both written atomically."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlops_nb.products import atomic_path
from mlops_nb.registry import CHAMPION, fetch_version
from mlops_nb.settings import Settings, load_settings

__all__ = ["predict_file", "BatchSummary", "BatchInputError", "rejected_path_for", "FORMATS"]

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
# what pyarrow's string -> float64 cast accepts, once whitespace is trimmed; anything else is not a number
NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(?i:nan|inf|infinity)$"
SCORE_ROWS = 4096  # rows per ONNX Runtime call: its arena stays small and the activations stay in cache
PARSE_BLOCK = 2048  # a column that fails to parse is retried in blocks this long: bad values are usually sparse


class BatchInputError(ValueError):
    """The input cannot be scored at all: no such file, a format not read, missing feature columns, a file that
    does not parse. Raised before any output is written (or the partial output is removed)."""


@dataclass(frozen=True)
class BatchSummary:
    """What one `predict_file` run did: every input row is either scored or rejected."""

    model_version: str
    rows: int
    scored: int
    rejected: int
    seconds: float
    output: Path | str  # a Spark URI stays a string
    rejected_path: Path | str

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "output": str(self.output), "rejected_path": str(self.rejected_path),
                "rows_per_s": round(self.rows_per_s, 1)}


def rejected_path_for(output: Path | str) -> Path | str:
    """The default rejected-rows file beside OUTPUT: `<stem>.rejected.<ext>`; a Path for a Path, a string for a
    string (a Spark URI such as s3a://bucket/key, which Path would rewrite)."""
    root, extension = os.path.splitext(str(output))
    rejected = f"{root}.rejected{extension}"
    return Path(rejected) if isinstance(output, Path) else rejected


def _format(path: Path, role: str) -> str:
    if path.suffix.lower() not in FORMATS:
        raise BatchInputError(f"{role} {path}: name a .csv or .parquet file (the extension decides the format)")
    return FORMATS[path.suffix.lower()]


def _parse_numbers(column: pa.Array) -> pa.Array:
    """A string column as float64, values that are not numbers as nulls (fast path: one cast for the column)."""
    try:
        return pc.cast(column, pa.float64())
    except pa.ArrowInvalid:
        pass
    if len(column) > PARSE_BLOCK:
        return pa.concat_arrays([_parse_numbers(column.slice(start, PARSE_BLOCK))
                                 for start in range(0, len(column), PARSE_BLOCK)])
    trimmed = pc.utf8_trim_whitespace(column)
    numbers = pc.if_else(pc.match_substring_regex(trimmed, NUMBER), trimmed, pa.scalar(None, column.type))
    try:
        return pc.cast(numbers, pa.float64())
    except pa.ArrowInvalid:  # a value the pattern lets through but the cast refuses: decide one by one
        def number(value):
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
        return pa.array([number(v) for v in numbers.to_pylist()], pa.float64())


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def _features(batch: pa.RecordBatch, names: list[str]) -> np.ndarray:
    """The feature columns as one float64 array (rows x features); NaN marks a missing or non-numeric value."""
    out = np.empty((len(names), batch.num_rows), dtype=np.float64)  # filled column by column, returned transposed
    for j, name in enumerate(names):
        column = batch.column(name)
        values = _parse_numbers(column) if _is_text(column.type) else pc.cast(column, pa.float64())
        out[j] = values.to_numpy(zero_copy_only=False)  # nulls become NaN
    return out.T


class _CsvReader:
    """A CSV file as record batches of text columns (values exactly as written), about `chunk_rows` rows each.

    The file is read a block of whole lines at a time and each block parsed on its own (pyarrow's streaming reader
    reads ahead without bound when scoring is slower than parsing). Every line is a row: a line with the wrong number
    of fields, which pyarrow cannot return, is kept in `malformed` (its 0-based row number and reason) and the rows
    after it keep their numbers; a blank line is a row of empty values; a quoted value cannot span lines."""

    def __init__(self, path: Path, chunk_rows: int):
        import pyarrow.csv as csv

        with open(path, "rb") as f:
            header, head = f.readline(), f.read(1 << 16)
        if not header.strip():
            raise BatchInputError(f"{path} has no header line naming its columns")
        self._csv, self._path = csv, path
        self._header = header if header.endswith(b"\n") else header + b"\n"
        self.schema = csv.read_csv(pa.BufferReader(self._header)).schema
        self.schema = pa.schema([(name, pa.string()) for name in self.schema.names])
        self.columns = list(self.schema.names)
        self.total_rows = None
        self.malformed: dict[int, str] = {}
        row_bytes = max(len(head) / max(head.count(b"\n"), 1), 1.0)
        self._block_bytes = int(min(max(chunk_rows * row_bytes, 1 << 16), 1 << 28))

    def __iter__(self):
        with open(self._path, "rb") as f:
            f.readline()
            line, rest = 2, b""  # the file's line number of the next line to parse (the header is line 1)
            while True:
                block = f.read(self._block_bytes)
                data = rest + block
                if not data:
                    return
                cut = data.rfind(b"\n") + 1 if block else len(data)
                if cut == 0:  # a line longer than a block: read on
                    rest = data
                    continue
                lines, rest = data[:cut], data[cut:]
                yield self._parse(lines, line)
                line += lines.count(b"\n")

    def _parse(self, lines: bytes, first_line: int) -> pa.RecordBatch:
        csv = self._csv

        def invalid(row) -> str:
            if row.number is None:  # known when parsing on one thread; refuse rather than guess
                return "error"
            line = first_line + row.number - 2  # row.number counts the header put in front
            self.malformed[line - 2] = (f"line {line} of the file has {row.actual_columns} fields; expected "
                                        f"{row.expected_columns}")
            return "skip"

        table = csv.read_csv(
            pa.BufferReader(self._header + lines),
            read_options=csv.ReadOptions(use_threads=False, block_size=len(self._header) + len(lines) + 1),
            parse_options=csv.ParseOptions(invalid_row_handler=invalid, ignore_empty_lines=False),
            convert_options=csv.ConvertOptions(column_types=dict.fromkeys(self.columns, pa.string())))
        return table.combine_chunks().to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist(
            [], schema=self.schema)


class _ParquetReader:
    """A Parquet file as record batches of `chunk_rows` rows, read row group by row group."""

    def __init__(self, path: Path, chunk_rows: int):
        import pyarrow.parquet as pq

        self._file = pq.ParquetFile(path, pre_buffer=False)
        self.schema = self._file.schema_arrow
        self.columns = list(self.schema.names)
        self.total_rows = self._file.metadata.num_rows
        self.malformed: dict[int, str] = {}
        self._chunk_rows = chunk_rows

    def __iter__(self):
        return self._file.iter_batches(batch_size=self._chunk_rows)


def _open(path: Path, chunk_rows: int):
    kind = _format(path, "INPUT")
    if not path.is_file():
        raise BatchInputError(f"INPUT {path} does not exist")
    try:
        return (_CsvReader if kind == "csv" else _ParquetReader)(path, chunk_rows)
    except (pa.ArrowInvalid, OSError) as error:
        raise BatchInputError(f"{path} is not a readable {kind.upper()} file: {error}") from None


def _renamed(names: list[str], taken: set[str]) -> dict[str, str]:
    """Input column -> its name in an output file: `input_<name>` where the output's own columns use the name."""
    return {name: f"input_{name}" if name in taken else name for name in names}


class _Writer:
    """Tables of one schema appended to a CSV or Parquet file."""

    def __init__(self, path: Path, kind: str, schema: pa.Schema):
        import pyarrow.csv as csv
        import pyarrow.parquet as pq

        self.schema = schema
        self._writer = pq.ParquetWriter(path, schema) if kind == "parquet" else csv.CSVWriter(path, schema)

    def write(self, columns: list) -> None:
        self._writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))

    def close(self) -> None:
        self._writer.close()


def predict_file(input: Path | str, output: Path | str, *, version: str = CHAMPION, settings: Settings | None = None,
                 rejected: Path | str | None = None, chunk_rows: int = 65536, progress: bool = True) -> BatchSummary:
    """Score every row of INPUT (CSV or Parquet) with a registered version (default: the champion), `chunk_rows`
    at a time, through the same ONNX file and `ScoringCore` as the service, with its one validation.

    OUTPUT (CSV or Parquet, by extension) gets, per valid row: its 0-based input `row`, the input's non-feature
    columns, `label` (the class, as served), `confidence`, `p_<class>` for each class and `model_version`. Rows that
    fail validation go to `rejected` (default `<OUTPUT stem>.rejected.<ext>`): `row`, the input's columns as read,
    and `reason` (naming the column). Both files appear only when the run completes. `BatchInputError` for an input
    that cannot be scored at all, `RegistryError` for a version that cannot be fetched."""
    from tqdm import tqdm

    from mlops_nb.serving.scoring import ScoringCore, row_reasons

    started = time.perf_counter()
    settings = settings or load_settings()
    source, output = Path(input), Path(output)
    rejected = Path(rejected) if rejected else rejected_path_for(output)
    out_kind, rejected_kind = _format(output, "OUTPUT"), _format(rejected, "the rejected-rows file")
    if len({source.resolve(), output.resolve(), rejected.resolve()}) < 3:
        raise BatchInputError("INPUT, OUTPUT and the rejected-rows file must be three different files")
    if chunk_rows < 1:
        raise BatchInputError(f"chunk_rows must be at least 1, not {chunk_rows}")
    reader = _open(source, chunk_rows)
    if repeated := sorted({name for name in reader.columns if reader.columns.count(name) > 1}):
        raise BatchInputError(f"{source} names these columns more than once: {', '.join(repeated)}")
    with tempfile.TemporaryDirectory() as tmp:
        folder, card = fetch_version(settings.registry.model_name, version, Path(tmp) / "model", settings)
        core = ScoringCore(folder, card, device=settings.serving.device, max_rows=chunk_rows)
    if missing := [name for name in card.features if name not in reader.columns]:
        raise BatchInputError(f"{source} lacks {len(missing)} of the model's {card.n_features} feature columns: "
                              f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    if wrong := [f"{name} ({reader.schema.field(name).type})" for name in card.features
                 if not (_is_text(reader.schema.field(name).type) or _is_number(reader.schema.field(name).type))]:
        raise BatchInputError(f"{source}: feature columns must hold numbers (or text); these do not: "
                              f"{', '.join(wrong[:10])}")

    classes = np.asarray(card.classes)
    probability_columns = [f"p_{c}" for c in card.classes]
    label_type = pa.string() if classes.dtype.kind in "OUS" else pa.int64()
    passed = [name for name in reader.columns if name not in set(card.features)]
    out_names = _renamed(passed, {"row", "label", "confidence", "model_version", *probability_columns})
    rejected_names = _renamed(reader.columns, {"row", "reason"})
    out_schema = pa.schema([("row", pa.int64()), *[(out_names[n], reader.schema.field(n).type) for n in passed],
                            ("label", label_type), ("confidence", pa.float32()),
                            *[(name, pa.float32()) for name in probability_columns], ("model_version", pa.string())])
    rejected_schema = pa.schema([("row", pa.int64()),
                                 *[(rejected_names[n], reader.schema.field(n).type) for n in reader.columns],
                                 ("reason", pa.string())])
    rows = scored = n_rejected = 0
    next_row = 0
    bar = tqdm(total=reader.total_rows, unit="rows", unit_scale=True, file=sys.stderr, desc="scoring",
               disable=not (progress and sys.stderr.isatty()))
    with ExitStack() as stack:
        stack.callback(bar.close)
        out_writer = _Writer(stack.enter_context(atomic_path(output)), out_kind, out_schema)
        stack.callback(out_writer.close)  # closed before the renames (callbacks run last in, first out)
        rejected_writer = _Writer(stack.enter_context(atomic_path(rejected)), rejected_kind, rejected_schema)
        stack.callback(rejected_writer.close)
        try:
            for batch in reader:
                n = batch.num_rows
                ids = _row_numbers(next_row, n, reader.malformed)
                next_row = int(ids[-1]) + 1 if n else next_row
                array = _features(batch, card.features)
                reasons = row_reasons(array, features=card.features, low=card.feature_min, high=card.feature_max)
                good = np.ones(n, dtype=bool)
                good[list(reasons)] = False
                if reasons:
                    bad = pa.array(np.flatnonzero(~good))
                    rejected_writer.write([pa.array(ids[~good]),
                                           *[batch.column(name).take(bad) for name in reader.columns],
                                           pa.array([reasons[i] for i in sorted(reasons)], pa.string())])
                if good.any():
                    features = array.astype(np.float32, order="C")  # as validate_rows hands them to the core
                    features = features[good] if reasons else features
                    probabilities = np.concatenate([core.score(features[start:start + SCORE_ROWS])
                                                    for start in range(0, len(features), SCORE_ROWS)])
                    keep = pa.array(np.flatnonzero(good))
                    k = len(probabilities)
                    out_writer.write([pa.array(ids[good]), *[batch.column(name).take(keep) for name in passed],
                                      pa.array(classes[probabilities.argmax(axis=1)], label_type),
                                      pa.array(probabilities.max(axis=1)),
                                      *[pa.array(probabilities[:, c]) for c in range(len(card.classes))],
                                      pa.array([card.model_version] * k, pa.string())])
                lines = _malformed(reader, next_row, rejected_writer)
                rows, scored = rows + n + lines, scored + int(good.sum())
                n_rejected += len(reasons) + lines
                bar.update(n + lines)
            lines = _malformed(reader, None, rejected_writer)  # after the last row that parsed
            rows, n_rejected = rows + lines, n_rejected + lines
        except pa.ArrowInvalid as error:
            raise BatchInputError(f"{source}: reading stopped at about row {next_row}: {error}") from None
    return BatchSummary(model_version=str(card.model_version), rows=rows, scored=scored, rejected=n_rejected,
                        seconds=time.perf_counter() - started, output=output, rejected_path=rejected)


def _malformed(reader, before: int | None, writer: _Writer) -> int:
    """Write the lines the reader skipped (wrong number of fields) before row `before` (None: all) as rejected rows,
    with their line number in the reason and no values; forget them; return how many."""
    found = sorted(r for r in reader.malformed if before is None or r < before)
    if found:
        writer.write([pa.array(found, pa.int64()), *[pa.nulls(len(found), field.type) for field in writer.schema][1:-1],
                      pa.array([reader.malformed.pop(r) for r in found], pa.string())])
    return len(found)


def _row_numbers(start: int, n: int, skipped: dict[int, str]) -> np.ndarray:
    """The input row numbers of the next `n` rows read, from `start`, past the rows in `skipped` (malformed lines
    that the reader did not return)."""
    ids = np.arange(start, start + n, dtype=np.int64)
    if not skipped or n == 0:
        return ids
    known = np.fromiter((r for r in skipped if r >= start), dtype=np.int64)
    if not len(known):
        return ids
    candidates = np.arange(start, start + n + len(known), dtype=np.int64)
    return candidates[~np.isin(candidates, known)][:n]
