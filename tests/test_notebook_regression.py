"""The notebook regression run catches a changed result: stored numbers are compared with a fresh run within a
tolerance (mlops_nb.notebook_regression), not dropped. Tested on the rules, then on perturbed copies of the
notebooks run the way README's `pytest` runs them."""

import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from conftest import BIN, REPO, copy_project, project_env

from mlops_nb.notebook_outputs import isolated_environ
from mlops_nb.notebook_regression import REFRESH, Tolerance, cell_tolerance, compare_text

DEFAULT = Tolerance(rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("expected, got, passes", [
    ("test accuracy 0.9778", "test accuracy 0.9778", True),
    ("test accuracy 0.9778", "test accuracy 0.5012", False),  # a regression
    ("test accuracy 0.9778", "test accuracy 0.9777", True),  # one unit of the last printed digit: two roundings
    ("test accuracy 0.9778", "test accuracy 0.9776", False),
    ("loss 0.30000000000000004", "loss 0.3", True),  # the last bits, as on another CPU
    ("loss 0.123456789", "loss 0.123457", True),  # within 1e-5 relative
    ("loss 0.123456789", "loss 0.123466789", False),  # beyond it
    ("270 test rows", "271 test rows", False),  # integers compare exactly
    ("<td>27</td><td>0</td>", "<td>26</td><td>1</td>", False),  # a confusion matrix's counts
    ("sha 84c285078415e2b4", "sha 84c285078415e2b5", False),  # hashes are text
    ("class cat", "class dog", False),
    ("max |onnx - torch| = 3.9e-07", "max |onnx - torch| = 3.91e-07", True),
    ("max |onnx - torch| = 3.9e-07", "max |onnx - torch| = 4.1e-07", False),
    ("epochs 40.", "epochs 41.", False),  # a number at the end of a sentence is still a number
    ("count 12", "count 12.5", False),  # an integer never matches a float
])
def test_numbers_within_tolerance_integers_and_text_exactly(expected, got, passes):
    assert (compare_text(expected, got, DEFAULT) is None) == passes


def test_a_cell_comment_sets_its_own_tolerance():
    assert cell_tolerance("x = 1", DEFAULT) == DEFAULT
    commented = "# tolerance: atol=1e-6 (rounding differs by CPU)\nprint(x)"
    assert cell_tolerance(commented, DEFAULT) == Tolerance(1e-5, 1e-6)
    loose = cell_tolerance("# tolerance: rtol=0.01 atol=0\n", DEFAULT)
    assert compare_text("loss 0.500", "loss 0.504", loose) is None
    with pytest.raises(ValueError, match="rtol=... and atol="):
        cell_tolerance("# tolerance: rel=0.1", DEFAULT)


def perturb(path: Path, cell: int, pattern: str, replacement: str) -> None:
    """Replace the first match of `pattern` in each of code cell `cell`'s stored text outputs (at least one)."""
    notebook = nbformat.read(path, as_version=4)
    outputs = [c for c in notebook.cells if c.cell_type == "code"][cell].outputs
    replaced = 0
    for output in outputs:
        fields = [(output, "text")] if "text" in output else [(output.data, m) for m in output.get("data", {})
                                                                if m.startswith("text/")]
        for container, key in fields:
            container[key], count = re.subn(pattern, replacement, container[key], count=1)
            replaced += count
    assert replaced, f"{path.name} cell {cell}: nothing matches {pattern!r}"
    nbformat.write(notebook, path)


def test_perturbed_stored_figures_fail_beyond_tolerance_and_pass_within(tmp_path):
    """Copies of notebooks 01-04 with stored figures changed: the accuracy and one confusion-matrix count beyond
    tolerance (each cell fails, saying what and how to refresh), a table value and a loss within it (they pass)."""
    root = copy_project(tmp_path / "project", commit=False)
    (root / "tests").mkdir()
    shutil.copy2(REPO / "tests/nbval_sanitize.cfg", root / "tests")
    notebooks = root / "notebooks"
    perturb(notebooks / "04_evaluate.ipynb", 6, r"'test_accuracy': 0\.\d+", "'test_accuracy': 0.5012")
    perturb(notebooks / "04_evaluate.ipynb", 8, r"(?m)^(0\s+)(\d+)", lambda m: f"{m[1]}{int(m[2]) - 1}")
    perturb(notebooks / "04_evaluate.ipynb", 7, r"1\.000", "0.999")
    perturb(notebooks / "03_train.ipynb", 15, r"(?m)(\d\.\d{3})(\d)$",
            lambda m: m[1] + ("8" if m[2] == "9" else str(int(m[2]) + 1)))  # one unit of the last digit
    first_four = [str(path.relative_to(root)) for path in sorted(notebooks.glob("0[1-4]_*.ipynb"))]
    result = subprocess.run([str(BIN / "pytest"), "-rA", *first_four], cwd=root, capture_output=True, text=True,
                            timeout=900, env=project_env(root, **isolated_environ(tmp_path / "state")))
    outcome = {m[2]: m[1] for m in re.finditer(r"^(PASSED|FAILED) notebooks/(\S+::Cell \d+)", result.stdout, re.M)}
    assert outcome["04_evaluate.ipynb::Cell 6"] == "FAILED", result.stdout[-5000:]
    assert outcome["04_evaluate.ipynb::Cell 8"] == "FAILED"
    assert outcome["04_evaluate.ipynb::Cell 7"] == outcome["03_train.ipynb::Cell 15"] == "PASSED"
    assert [cell for cell, status in outcome.items() if status == "FAILED"] == ["04_evaluate.ipynb::Cell 6",
                                                                                 "04_evaluate.ipynb::Cell 8"]
    report = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    assert "04_evaluate.ipynb, cell 6, stdout #1 in " in report
    assert "expected '0.5012'" in report and "integers compare exactly" in report and REFRESH in report
