"""Score rows with this bundle's model; needs only numpy and onnxruntime (pip install onnxruntime numpy).

    python predict.py rows.csv             a CSV file: a header naming the features (other columns are ignored), or
                                           none (then every row holds the features in model_card.json's order)
    python predict.py rows.jsonl           JSON lines: one row per line, a list of values or an object by name
    python predict.py --json '[[...], ...]'
    python predict.py - < rows.csv         read the rows from standard input (CSV, or JSON lines when a line
                                           starts with [ or {)

Prints one label per line; --probabilities prints JSON lines {"label": ..., "probabilities": [...]} instead.
An empty or null value is a missing one: the model fills it in (the preprocessing is inside the graph).
"""

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent


def load(folder=HERE):
    """The model (the ORT format file), its feature names and its labels (in the order of its outputs)."""
    card = json.loads((folder / "model_card.json").read_text())
    labels = json.loads((folder / "labels.json").read_text())
    return ort.InferenceSession(str(folder / "model.ort"), providers=["CPUExecutionProvider"]), card["features"], labels


def predict(session, rows):
    """Class probabilities for rows of raw feature values (NaN: missing)."""
    x = np.asarray(rows, dtype=np.float32).reshape(-1, session.get_inputs()[0].shape[1])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def number(value):
    """A CSV or JSON value as a float: empty or null is missing (NaN)."""
    return float("nan") if value is None or str(value).strip() == "" else float(value)


def json_rows(lines, features):
    """Rows from JSON values: lists in feature order, or objects by feature name."""
    return [[number(row.get(name)) for name in features] if isinstance(row, dict) else [number(v) for v in row]
            for row in lines]


def is_number(value):
    try:
        number(value)
        return True
    except ValueError:
        return False


def csv_rows(text, features):
    """Rows from CSV text, with or without a header naming the features."""
    records = [record for record in csv.reader(io.StringIO(text)) if record]
    if records and not all(map(is_number, records[0])):  # a header: pick the feature columns by name
        header, records = records[0], records[1:]
        missing = [name for name in features if name not in header]
        if missing:
            sys.exit(f"predict.py: the CSV header lacks {len(missing)} of the features: {', '.join(missing[:3])}, ...")
        records = [[record[header.index(name)] for name in features] for record in records]
    return [[number(v) for v in record] for record in records]


def read_rows(source, features):
    """The rows of a file (CSV or JSON lines, by its first character) or of standard input (`-`)."""
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    if text.lstrip()[:1] in ("[", "{"):
        return json_rows([json.loads(line) for line in text.splitlines() if line.strip()], features)
    return csv_rows(text, features)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="?", help="a CSV or JSON lines file, or - for standard input")
    parser.add_argument("--json", help="the rows as one JSON array of rows")
    parser.add_argument("--probabilities", action="store_true", help="print labels and probabilities as JSON lines")
    args = parser.parse_args(argv)
    if (args.rows is None) == (args.json is None):
        parser.error("give a rows file (or -) or --json")
    session, features, labels = load()
    try:
        rows = json_rows(json.loads(args.json), features) if args.json else read_rows(args.rows, features)
    except (ValueError, IndexError) as error:
        sys.exit(f"predict.py: cannot read the rows: {error}")
    if rows and any(len(row) != len(features) for row in rows):
        sys.exit(f"predict.py: every row needs {len(features)} values ({', '.join(features[:3])}, ...)")
    for p in predict(session, rows) if rows else []:
        label = labels[int(p.argmax())]
        print(json.dumps({"label": label, "probabilities": p.tolist()}) if args.probabilities else label)


if __name__ == "__main__":
    main()
