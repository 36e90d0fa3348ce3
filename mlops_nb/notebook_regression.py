"""Notebook regression run: nbval with numbers compared within a tolerance instead of dropped (a pytest plugin:
`-p mlops_nb.notebook_regression --nbval-tolerant`); integers, labels, hashes and text compare exactly."""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass

import nbformat
from nbval.plugin import IPyNbCell, IPyNbFile

__all__ = ["Tolerance", "Mismatch", "compare_text", "cell_tolerance", "REFRESH"]

REFRESH = ".venv/bin/mlops-nb refresh-outputs"  # re-runs every notebook and stores its outputs, cleaned
# a number standing alone (not part of a word, a hash or a path): 12, -0.5, 3.9e-07
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?!\w|\.\d)")
CELL_TOLERANCE = re.compile(r"^#\s*tolerance:(.*)$", re.MULTILINE)  # `# tolerance: rtol=1e-3 atol=1e-6 (why)`


@dataclass(frozen=True)
class Tolerance:
    """A float matches when |got - expected| <= atol + rtol * |expected|, or is within one unit of the last digit
    the stored output printed (two roundings of the same value differ by at most that)."""

    rtol: float
    atol: float

    def allows(self, expected: str, got: str) -> bool:
        e, g = float(expected), float(got)
        mantissa = expected.lower().split("e")[0]
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        exponent = int(expected.lower().split("e")[1]) if "e" in expected.lower() else 0
        return abs(g - e) <= max(self.atol + self.rtol * abs(e), 10.0 ** (exponent - decimals) * (1 + 1e-9))

    def __str__(self) -> str:
        return f"|got - expected| <= {self.atol:g} + {self.rtol:g} * |expected|, or one unit of the last printed digit"


@dataclass(frozen=True)
class Mismatch:
    """The first difference in one output: where, what was stored, what the run gave, and why it fails."""

    where: str
    expected: str
    got: str
    reason: str


def _is_float(token: str) -> bool:
    return "." in token or "e" in token.lower()


def _around(text: str, start: int, end: int) -> str:
    return text[max(0, start - 40):end + 20].replace("\n", "\\n")


def compare_text(expected: str, got: str, tolerance: Tolerance) -> Mismatch | None:
    """Compare two outputs: the text around numbers exactly, integers exactly, floats within `tolerance`."""
    stored, fresh = list(NUMBER.finditer(expected)), list(NUMBER.finditer(got))
    if NUMBER.sub("#", expected) != NUMBER.sub("#", got) or len(stored) != len(fresh):
        return None if expected == got else Mismatch("text", expected[-400:], got[-400:], "the text differs")
    for a, b in zip(stored, fresh):
        e, g = a.group(), b.group()
        if e == g:
            continue
        if not (_is_float(e) or _is_float(g)):
            return Mismatch(f"in {_around(expected, a.start(), a.end())!r}", e, g, "integers compare exactly")
        if _is_float(e) != _is_float(g):
            return Mismatch(f"in {_around(expected, a.start(), a.end())!r}", e, g, "an integer and a float differ")
        if not (math.isfinite(float(e)) and tolerance.allows(e, g)):
            return Mismatch(f"in {_around(expected, a.start(), a.end())!r}", e, g, f"tolerance: {tolerance}")
    return None


def cell_tolerance(source: str, default: Tolerance) -> Tolerance:
    """The project's tolerance, with what a `# tolerance: rtol=... atol=...` comment in the cell sets instead."""
    found = CELL_TOLERANCE.search(source)
    if not found:
        return default
    values = dict(re.findall(r"(\w+)=(\S+)", found.group(1)))  # words without `=` are the reader's
    unknown = set(values) - {"rtol", "atol"}
    if unknown:
        raise ValueError(f"`# tolerance:` takes rtol=... and atol=..., not {sorted(unknown)}")
    return Tolerance(float(values.get("rtol", default.rtol)), float(values.get("atol", default.atol)))


def _texts(outputs) -> list[tuple[str, dict, str]]:
    """(label, container, key) of each text field in outputs (streams, and text/* data of displays and results),
    labelled by kind and occurrence (`stdout #1`, `text/plain #2`) as nbval pairs them: order across kinds is free."""
    found, seen = [], {}
    for output in outputs:
        fields = [(output["name"], output, "text")] if output.get("output_type") == "stream" else \
            [(mime, output["data"], mime) for mime in output.get("data", {}) if mime.startswith("text/")]
        for kind, container, key in fields:
            seen[kind] = seen.get(kind, 0) + 1
            found.append((f"{kind} #{seen[kind]}", container, key))
    return found


class TolerantCell(IPyNbCell):
    """A notebook cell whose stored outputs are compared with a fresh run: numbers within tolerance, rest exactly.

    nbdev-clean blanks execution counts, which nbval takes as "never run": every cell counts as run, so one that
    stored no output must still print none."""

    def runtest(self):
        self.cell.execution_count = self.cell.get("execution_count") or self.cell_num + 1
        super().runtest()

    def compare_outputs(self, test, ref, skip_compare=None):
        config = self.config
        tolerance = cell_tolerance(self.cell.source, Tolerance(float(config.getini("notebook_rtol")),
                                                              float(config.getini("notebook_atol"))))
        test = [nbformat.from_dict(copy.deepcopy(output)) for output in test]
        stored = {label: (container, key) for label, container, key in _texts(ref)}
        for label, container, key in _texts(test):
            if label not in stored:
                continue
            expected = self.sanitize(stored[label][0][key])
            got = self.sanitize(container[key])
            mismatch = compare_text(expected, got, tolerance)
            if mismatch is None:
                container[key] = stored[label][0][key]  # equal within tolerance: nbval then compares the rest
            else:
                self.comparison_traceback = [
                    f"{self.fspath.basename}, cell {self.cell_num}, {label} {mismatch.where}:",
                    f"  expected {mismatch.expected!r}", f"  got      {mismatch.got!r}", f"  {mismatch.reason}",
                    f"If the change is intended, store the new outputs: {REFRESH} (then review `git diff notebooks/`)"]
                return False
        return super().compare_outputs(test, ref, skip_compare)


class TolerantNotebook(IPyNbFile):
    """nbval's notebook collector, yielding `TolerantCell`s."""

    def collect(self):
        for item in super().collect():
            yield TolerantCell.from_parent(self, name=item.name, cell_num=item.cell_num, cell=item.cell,
                                           options=item.options)


def pytest_addoption(parser):
    parser.addoption("--nbval-tolerant", action="store_true",
                     help="run notebooks and compare their stored outputs, numbers within notebook_rtol/notebook_atol")
    parser.addini("notebook_rtol", "relative tolerance for floats in notebook outputs", default="1e-5")
    parser.addini("notebook_atol", "absolute tolerance for floats in notebook outputs", default="1e-8")


def pytest_collect_file(file_path, parent):
    if parent.config.option.nbval_tolerant and file_path.suffix == ".ipynb":
        return TolerantNotebook.from_parent(parent, path=file_path)
