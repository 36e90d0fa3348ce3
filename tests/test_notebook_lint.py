"""`mlops_nb.notebook_lint` on the fixtures in tests/fixtures/lint (see make_fixtures.py) and the project's."""

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from mlops_nb.notebook_lint import (MAX_NOTEBOOK_BYTES, RULES, Finding, at_or_above, lint_notebook, lint_paths,
                                    to_json)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "lint"
# NB9xx need a project's DAG (mlops_nb.lint): tests/test_notebooks.py covers them
NOTEBOOK_RULES = {code: rule for code, rule in RULES.items() if not code.startswith("NB9")}

# Every fixture, with exactly the (rule, cell) pairs lint must report, in lint's order (by cell, then rule).
EXPECTED = {
    "nb101_no_parameters.ipynb": [("NB101", None)],
    "nb101_parameters_tag_typo.ipynb": [("NB101", None)],
    "nb102_two_parameters_cells.ipynb": [("NB102", 4)],
    "nb201_out_of_order.ipynb": [("NB201", 4)],
    "nb201_counts_with_gaps.ipynb": [("NB201", 3)],
    "nb201_not_starting_at_one.ipynb": [("NB201", 1)],
    # df_clean came from a deleted cell; TARGET_COL is used in a function body but defined nowhere
    "nb301_hidden_state_deleted_cell.ipynb": [("NB301", 3), ("NB301", 4)],
    # scaler and X defined by later cells; a comprehension variable used outside it; `n_runs += 1` first
    "nb301_defined_later.ipynb": [("NB301", 2), ("NB301", 2), ("NB301", 5), ("NB301", 6)],
    # make_classification, np.random.randn, train_test_split, RF alias, KFold(shuffle=True), default_rng()
    "nb401_unseeded_numpy_sklearn.ipynb": [("NB401", 3), ("NB401", 4), ("NB401", 5), ("NB401", 6), ("NB401", 7),
                                           ("NB401", 8)],
    # an imputer, a scaler and an encoder fitted on every row before train_test_split, and a scaler inside its
    # arguments; not the label encoder, nor the scaler after the split
    "nb402_scaler_fitted_before_split.ipynb": [("NB402", 3), ("NB402", 4), ("NB402", 4), ("NB402", 5)],
    # a TfidfVectorizer (aliased) and a PCA fitted before a project's split_indices
    "nb402_vectorizer_and_pca_before_split.ipynb": [("NB402", 2), ("NB402", 2)],
    "clean_fit_after_split.ipynb": [],
    # random.shuffle + random.sample, torch.randn + torch.rand, npr.choice; after torch.manual_seed all is fine
    "nb401_unseeded_torch_random.ipynb": [("NB401", 2), ("NB401", 2), ("NB401", 3), ("NB401", 3), ("NB401", 4)],
    # /home/..., C:\Users\..., ~/..., f"/Users/..."; not the markdown, the docstring or the https URL
    "nb501_user_paths.ipynb": [("NB501", 1), ("NB501", 2), ("NB501", 3), ("NB501", 4)],
    # /mnt, /tmp, /data and /root; not "/", s3://, a regex, a strftime format or BASE + "/models/v2/"
    "nb501_mounts_and_tmp.ipynb": [("NB501", 2), ("NB501", 3), ("NB501", 4), ("NB501", 4)],
    "nb601_huge_html_output.ipynb": [("NB601", 2)],
    "nb601_big_dataframe_output.ipynb": [("NB601", 2)],
    # sk- key (format), db_password = literal, token= keyword, {"api_key": literal}; not max_tokens/tokenizer
    "nb701_hardcoded_api_key.ipynb": [("NB701", 1), ("NB701", 2), ("NB701", 3), ("NB701", 4)],
    # AWS key id in printed env, a GitHub token in `git remote -v` (fetch and push), a private key printed
    "nb701_secret_in_output.ipynb": [("NB701", 2), ("NB701", 3), ("NB701", 3), ("NB501", 4), ("NB701", 4)],
    # pd (annotation, at import time) and np (function body) come from a cell that is not exported
    "nb801_export_uses_scratch_import.ipynb": [("NB801", 3), ("NB801", 3)],
    # CONFIG (module level) and threshold (parameters cell, used in a function body)
    "nb801_export_uses_notebook_constant.ipynb": [("NB801", 4), ("NB801", 4)],
    "clean_nbdev_module.ipynb": [],
    "clean_seeded_generators.ipynb": [],
    "clean_star_imports.ipynb": [],
    "clean_magics.ipynb": [],
    "clean_env_secrets.ipynb": [],
    "clean_uris_and_relative_paths.ipynb": [],
    "clean_scoping.ipynb": [],
    # a cell that does not parse gives one info finding, and the hidden-state check stops there: the cell after
    # it uses `summary`, which only the broken cell defines, and is not reported
    "syntax_error_cell.ipynb": [("NB300", 2)],
    # NB101 ignored in the notebook metadata; `# noqa: NB401` and bare `# noqa` cells silent; `# noqa: NB501`
    # leaves that cell's NB401
    "noqa_and_metadata_ignore.ipynb": [("NB401", 3)],
}


def all_fixture_findings() -> list[Finding]:
    return lint_paths(sorted(FIXTURES.glob("*.ipynb")))


def test_every_fixture_is_listed_and_each_rule_has_two_positive_fixtures():
    assert sorted(p.name for p in FIXTURES.glob("*.ipynb")) == sorted(EXPECTED)
    for rule in set(NOTEBOOK_RULES) - {"NB102", "NB300"}:  # NB102 shares rule 1 with NB101; NB300 is info only
        assert sum(any(r == rule for r, _ in pairs) for pairs in EXPECTED.values()) >= 2, rule


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_findings_are_exactly_the_expected_ones(name):
    findings = lint_notebook(FIXTURES / name)
    assert [(f.rule, f.cell) for f in findings] == EXPECTED[name], "\n".join(map(str, findings))


def test_findings_are_complete_and_say_what_to_do():
    findings = all_fixture_findings()
    assert {f.rule for f in findings} == set(NOTEBOOK_RULES)
    for f in findings:
        assert f.severity == RULES[f.rule][0]
        assert f.message and f.evidence and f.fix, f
        assert f.notebook.endswith(".ipynb") and Path(f.notebook).exists()
        assert "\n" not in str(f) and str(f).count(" | ") >= 2


def test_str_is_one_line_with_path_cell_rule_and_fix():
    f = Finding("NB301", "error", "nb.ipynb", 3, "`x` is used before any cell defines it", "line 1: y = x",
                "define `x`")
    assert str(f) == ("nb.ipynb:cell 3: NB301 [error] `x` is used before any cell defines it | line 1: y = x | "
                      "fix: define `x`")
    assert str(Finding("NB101", "error", "nb.ipynb", None, "m", "e", "f")) == "nb.ipynb: NB101 [error] m | e | fix: f"


def test_secrets_are_masked_in_the_evidence():
    report = to_json(lint_notebook(FIXTURES / "nb701_secret_in_output.ipynb")
                     + lint_notebook(FIXTURES / "nb701_hardcoded_api_key.ipynb"))
    for secret in ("AKIAIOSFODNN7EXAMPLE", "ghp_EXAMPLE", "sk-proj-EXAMPLE", "Tr0ub4dor&3", "a1b2c3d4e5f6g7h8"):
        assert secret not in report


def test_hidden_state_messages_name_the_variable_and_line():
    messages = [(f.message, f.evidence) for f in lint_notebook(FIXTURES / "nb301_hidden_state_deleted_cell.ipynb")]
    assert messages[0] == ("`df_clean` is used before any cell defines it",
                           'line 2: features = df_clean.drop(columns=["target"])')
    assert messages[1][0] == "`TARGET_COL` is used before any cell defines it"


def test_out_of_order_says_which_problem():
    messages = {name: lint_notebook(FIXTURES / name)[0].message for name in
                ("nb201_out_of_order.ipynb", "nb201_counts_with_gaps.ipynb", "nb201_not_starting_at_one.ipynb")}
    assert messages["nb201_out_of_order.ipynb"].startswith("out of order: this cell ran as [4] after")
    assert messages["nb201_counts_with_gaps.ipynb"].startswith("gap in execution counts (3 then 6)")
    assert messages["nb201_not_starting_at_one.ipynb"].startswith("execution counts start at 12, not 1")


def test_noqa_suppresses_only_the_codes_it_names(tmp_path):
    cells = ['x = "/home/ana/data/x.csv"  # noqa: NB501', 'y = "/home/ana/data/y.csv"  # noqa: NB401',
             'z = "/home/ana/data/z.csv"  # NOQA', 'w = "/home/ana/data/w.csv"']
    nb = new_notebook(cells=[new_code_cell(c, metadata={"tags": ["parameters"]} if i == 0 else {})
                             for i, c in enumerate(cells)])
    nbformat.write(nb, tmp_path / "n.ipynb")
    assert [(f.rule, f.cell) for f in lint_notebook(tmp_path / "n.ipynb")] == [("NB501", 1), ("NB501", 3)]


def test_notebook_over_one_megabyte_is_reported_once_for_the_whole_notebook(tmp_path):
    chunk = "A" * 80_000  # each cell's outputs stay under the per-cell limit
    cells = [new_code_cell("x = 1", metadata={"tags": ["parameters"]})] + [
        new_code_cell("display(x)", outputs=[new_output("display_data", data={"image/png": chunk})])
        for _ in range(MAX_NOTEBOOK_BYTES // len(chunk) + 1)]
    nbformat.write(new_notebook(cells=cells), tmp_path / "big.ipynb")
    findings = lint_notebook(tmp_path / "big.ipynb")
    assert [(f.rule, f.cell) for f in findings] == [("NB601", None)]
    assert findings[0].message.startswith("notebook file is 1.") and findings[0].severity == "warning"


def test_non_python_notebooks_get_only_the_language_independent_checks(tmp_path):
    nb = new_notebook(cells=[new_code_cell('data <- read.csv("/home/ana/x.csv")\nprint(undefined_thing)')],
                      metadata={"kernelspec": {"name": "ir", "language": "R", "display_name": "R"}})
    nbformat.write(nb, tmp_path / "r.ipynb")
    assert [(f.rule, f.cell) for f in lint_notebook(tmp_path / "r.ipynb")] == [("NB101", None)]


def test_at_or_above_filters_by_severity():
    findings = all_fixture_findings()
    assert {f.severity for f in findings} == {"info", "warning", "error"}
    assert at_or_above(findings, "info") == findings
    assert {f.severity for f in at_or_above(findings, "warning")} == {"warning", "error"}
    assert {f.severity for f in at_or_above(findings, "error")} == {"error"}
    assert [f for f in findings if f.severity != "info"] == at_or_above(findings, "warning")
    with pytest.raises(ValueError, match="severity"):
        at_or_above(findings, "fatal")


def test_to_json_round_trips():
    findings = all_fixture_findings()
    loaded = json.loads(to_json(findings))
    assert isinstance(loaded, list) and len(loaded) == len(findings)
    assert all(set(d) == {"rule", "severity", "notebook", "cell", "message", "evidence", "fix"} for d in loaded)
    assert [Finding(**d) for d in loaded] == findings
    assert json.loads(to_json([])) == []


def test_lint_paths_takes_directories_and_keeps_paths_as_given(tmp_path):
    by_dir = lint_paths([FIXTURES])
    assert [(Path(f.notebook).name, f.rule, f.cell) for f in by_dir] == [
        (Path(f.notebook).name, f.rule, f.cell) for f in all_fixture_findings()]
    given = "tests/fixtures/lint/../lint/nb101_no_parameters.ipynb"
    assert {f.notebook for f in lint_paths([REPO / given])} == {str(REPO / given)}


def test_project_notebooks_have_nothing_at_warning_or_above():
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert notebooks
    findings = at_or_above(lint_paths(notebooks), "warning")
    assert not findings, "\n".join(map(str, findings))


def test_pre_commit_hook_definition():
    text = (REPO / ".pre-commit-hooks.yaml").read_text()
    for line in ("- id: mlops-nb-lint", "entry: mlops-nb lint", "language: python", "files: \\.ipynb$",
                 "pass_filenames: true"):
        assert line in text
