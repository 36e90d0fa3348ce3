"""Production-readiness checks for research notebooks (`mlops-nb lint`): each problem found is a `Finding`."""
# RULES lists the checks. Each check is a generator of (rule, cell, message, evidence, fix) tuples; lint_notebook
# adds severity and path, then drops what the notebook opts out of: a comment line `# noqa` (every rule) or
# `# noqa: NB301,NB401` in a cell silences that cell; notebook metadata {"mlops_nb": {"lint": {"ignore": [...]}}}
# silences codes for the whole notebook. Code checks read cells with IPython syntax turned into Python.

from __future__ import annotations

import ast
import builtins
import json
import re
from dataclasses import asdict, dataclass
from itertools import chain, takewhile
from pathlib import Path
from tokenize import TokenError

import nbformat
from IPython.core.inputtransformer2 import TransformerManager

__all__ = ["Finding", "RULES", "lint_notebook", "lint_paths", "at_or_above", "to_json"]

RULES: dict[str, tuple[str, str]] = {
    "NB101": ("error", "no cell tagged `parameters`: papermill/ploomber cannot inject parameters"),
    "NB102": ("error", "more than one cell tagged `parameters`: papermill injects after the first only"),
    "NB201": ("warning", "saved outputs come from an out-of-order run (execution counts not 1, 2, 3, ...)"),
    "NB300": ("info", "cell is not valid Python: the hidden-state check skips it and the cells after it"),
    "NB301": ("error", "hidden state: a name is used before any cell defines it"),
    "NB401": ("warning", "randomness without a seed: results change from run to run"),
    "NB402": ("warning", "leakage: a scaler, imputer or encoder is fitted before the train/test split"),
    "NB501": ("warning", "absolute or user-specific path in code: works on one machine only"),
    "NB601": ("warning", "outputs too large to commit (a cell over 100 kB, the notebook over 1 MB)"),
    "NB701": ("error", "secret-looking string in code or outputs"),
    "NB801": ("error", "exported cell uses a name only a non-exported cell defines: the module fails on import"),
    # project checks (mlops_nb.lint): they need the project's DAG
    "NB901": ("error", "the parameters cell sets a value that a build overrides (the build's value wins, silently)"),
    "NB902": ("warning", "notebook is not clean: a save in JupyterLab would change it"),
}
SEVERITIES = ("info", "warning", "error")
MAX_CELL_OUTPUT_BYTES = 100_000
MAX_NOTEBOOK_BYTES = 1_000_000


@dataclass(frozen=True)
class Finding:
    """One problem in one notebook cell (`cell` None: the whole notebook), its evidence and what to do."""

    rule: str
    severity: str
    notebook: str
    cell: int | None
    message: str
    evidence: str
    fix: str

    def __str__(self) -> str:
        where = self.notebook if self.cell is None else f"{self.notebook}:cell {self.cell}"
        return f"{where}: {self.rule} [{self.severity}] {self.message} | {self.evidence} | fix: {self.fix}"


# --- reading cells as Python ---------------------------------------------------------------------------------

_PYTHON_CELL_MAGICS = {"time", "timeit", "capture", "prun"}  # cell magics whose body is Python
_IPYTHON = TransformerManager()


@dataclass
class _Code:
    tree: ast.Module | None  # None: does not parse
    lines: list[str]
    error: str = ""

    def line(self, lineno: int) -> str:
        return self.lines[lineno - 1].strip()[:160] if 0 < lineno <= len(self.lines) else ""


def _parse(source: str) -> _Code:
    head, _, body = source.partition("\n")
    if head.startswith("%%"):
        name, *args = head[2:].split() or [""]
        if name not in _PYTHON_CELL_MAGICS:  # %%bash, %%sql, %%html...: nothing to check
            return _Code(ast.Module(body=[], type_ignores=[]), [])
        var = [a for a in args if not a.startswith("-")]  # `%%capture out` binds `out`
        source = (f"{var[0]} = None" if name == "capture" and var else "") + "\n" + body
    try:
        code = _IPYTHON.transform_cell(source)
        return _Code(ast.parse(code), code.splitlines())
    except (SyntaxError, ValueError, TokenError) as e:  # IPython's tokenizer raises some of these too
        where = f"line {e.lineno}: " if getattr(e, "lineno", None) else ""
        return _Code(None, source.splitlines(), where + getattr(e, "msg", str(e)))


def _sorted(tree: ast.AST, kind) -> list:
    return sorted((n for n in ast.walk(tree) if isinstance(n, kind)), key=lambda n: (n.lineno, n.col_offset))


# --- names: what each cell defines and uses (hidden state, exports) ------------------------------------------

_KNOWN = set(dir(builtins)) | {"In", "Out", "get_ipython", "display", "_", "__", "___", "exit", "quit"}
_EVALUATION_ORDER = {"Assign": ("value", "targets"), "AnnAssign": ("annotation", "value", "target"),
                     "For": ("iter", "target", "body", "orelse"), "AsyncFor": ("iter", "target", "body", "orelse")}


def _bindings(tree: ast.AST) -> set[str]:
    """Every name bound anywhere inside a function or lambda: parameters, assignments, imports, defs."""
    names = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
            names.add(n.id)
        elif isinstance(n, ast.arg):
            names.add(n.arg)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in n.names)
        elif isinstance(n, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and n.name:
            names.add(n.name)
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            names.update(n.names)
    return names


class _Names(ast.NodeVisitor):
    """Visits cells in order and records (cell, name, line) for each name used before it is defined. Module and
    class code runs in order; function bodies run later, so their free names only need a definition somewhere."""

    def __init__(self, everywhere: set[str] | None = None):
        self.everywhere = everywhere or set()  # module-level names defined anywhere in the notebook
        self.scopes = [("module", set())]
        self.star = False  # after `from x import *` or `%run`, names cannot be known
        self.missing: list[tuple[int, str, int]] = []
        self.cell = 0

    @property
    def defined(self) -> set[str]:
        return self.scopes[0][1]

    def run(self, cell: int, tree: ast.Module) -> None:
        self.cell = cell
        for stmt in tree.body:
            self.visit(stmt)

    def _use(self, name: str, node: ast.AST) -> None:
        if not (self.star or name in _KNOWN or any(name in names for _, names in self.scopes)):
            self.missing.append((self.cell, name, node.lineno))

    def _bind(self, name: str) -> None:
        self.scopes[-1][1].add(name)

    def generic_visit(self, node):  # fields in the order Python evaluates them (a value before its target)
        for field in _EVALUATION_ORDER.get(type(node).__name__, node._fields):
            value = getattr(node, field, None)
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    self.visit(child)

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load):
            self._use(node.id, node)
        elif isinstance(node.ctx, ast.Store):
            self._bind(node.id)

    def visit_AugAssign(self, node):
        if isinstance(node.target, ast.Name):
            self._use(node.target.id, node)
        self.visit(node.value)
        self.visit(node.target)

    def visit_NamedExpr(self, node):  # a walrus in a comprehension binds in the scope around it
        self.visit(node.value)
        next(names for kind, names in reversed(self.scopes) if kind != "comp").add(node.target.id)

    def visit_ExceptHandler(self, node):
        if node.name:
            self._bind(node.name)
        self.generic_visit(node)

    def visit_Import(self, node):  # `import a.b` binds `a`
        for alias in node.names:
            if alias.name == "*":
                self.star = True
            else:
                self._bind((alias.asname or alias.name).split(".")[0])

    visit_ImportFrom = visit_Import

    def visit_Call(self, node):  # `%run x.ipynb` defines names nobody can see here
        if (isinstance(node.func, ast.Attribute) and node.func.attr == "run_line_magic" and node.args
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == "run"):
            self.star = True
        self.generic_visit(node)

    def visit_MatchAs(self, node):  # also MatchStar, MatchMapping: capture patterns bind names
        self.generic_visit(node)
        if name := getattr(node, "name", None) or getattr(node, "rest", None):
            self._bind(name)

    visit_MatchStar = visit_MatchMapping = visit_MatchAs

    def _comprehension(self, node, *results):
        self.visit(node.generators[0].iter)  # the first iterable is evaluated outside the comprehension
        self.scopes.append(("comp", set()))
        for i, gen in enumerate(node.generators):
            if i:
                self.visit(gen.iter)
            self.visit(gen.target)
            for cond in gen.ifs:
                self.visit(cond)
        for result in results:
            self.visit(result)
        self.scopes.pop()

    def visit_ListComp(self, node):
        self._comprehension(node, node.elt)

    visit_SetComp = visit_GeneratorExp = visit_ListComp

    def visit_DictComp(self, node):
        self._comprehension(node, node.key, node.value)

    def visit_FunctionDef(self, node):  # also lambdas: decorators, defaults and annotations run now, the body later
        a = node.args
        now = getattr(node, "decorator_list", []) + a.defaults + a.kw_defaults + [getattr(node, "returns", None)]
        now += [x.annotation for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x]
        for expr in filter(None, now):
            self.visit(expr)
        if isinstance(node, ast.Lambda):
            return self._deferred(node, [node.body])
        self._bind(node.name)
        self.defined.update(n for g in ast.walk(node) if isinstance(g, ast.Global) for n in g.names)
        self._deferred(node, node.body)

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_ClassDef(self, node):
        for expr in node.decorator_list + node.bases + [k.value for k in node.keywords]:
            self.visit(expr)
        self.scopes.append(("class", set()))
        for stmt in node.body:
            self.visit(stmt)
        self.scopes.pop()
        self._bind(node.name)

    def _deferred(self, node, body):
        known = _bindings(node) | self.everywhere | _KNOWN
        known |= {n for kind, names in self.scopes if kind != "class" for n in names}
        for stmt in body:
            for n in ast.walk(stmt):
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and not self.star and n.id not in known:
                    self.missing.append((self.cell, n.id, n.lineno))


def _undefined(cells: list[tuple[int, ast.Module]]) -> tuple[set[str], list[tuple[int, str, int]]]:
    """Module-level names the cells define, and the first (cell, name, line) of each name used undefined."""
    first = _Names()
    for index, tree in cells:
        first.run(index, tree)
    second = _Names(first.defined)
    for index, tree in cells:
        second.run(index, tree)
    first_uses: dict[tuple[int, str], tuple[int, str, int]] = {}
    for cell, name, line in second.missing:
        first_uses.setdefault((cell, name), (cell, name, line))
    return first.defined, sorted(first_uses.values(), key=lambda use: (use[0], use[2]))


def _is_export(source: str) -> bool:
    top = takewhile(lambda line: not line.strip() or line.lstrip().startswith("#"), source.splitlines())
    return any(re.match(r"\s*#\s*\|\s*export[si]?(\s|$)", line) for line in top)


# --- checks --------------------------------------------------------------------------------------------------

def _parameters(nb):
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    if not tagged:
        n = sum(cell.cell_type == "code" for cell in nb.cells)
        yield ("NB101", None, "no cell is tagged `parameters`: a pipeline run cannot set this notebook's inputs",
               f"{n} code cells, none tagged 'parameters'",
               "put the inputs (paths, seed, hyperparameters) in one code cell near the top and tag it `parameters`")
    for i in tagged[1:]:
        yield ("NB102", i, f"another cell tagged `parameters` (the first is cell {tagged[0]})",
               nb.cells[i].source.strip().split("\n")[0][:160] or "(empty cell)",
               "merge the parameter cells into one, untag this one")


def _execution_order(nb):
    runs = [(i, c.execution_count) for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and c.get("execution_count") is not None]
    counts = [n for _, n in runs]
    evidence = "execution counts in cell order: " + ", ".join(map(str, counts[:15])) + (" ..." * (len(counts) > 15))
    fix = "restart the kernel and run all cells top to bottom, then save (or clear all outputs)"
    pairs = list(zip(runs, runs[1:]))
    problem = next(((i, f"out of order: this cell ran as [{n}] after a cell above it ran as [{before}]")
                    for (_, before), (i, n) in pairs if n <= before), None)
    if not problem and counts and counts[0] != 1:
        problem = runs[0][0], f"execution counts start at {counts[0]}, not 1: the kernel had run other code first"
    problem = problem or next(((i, f"gap in execution counts ({before} then {n}): cells were re-run or deleted "
                                   "in between") for (_, before), (i, n) in pairs if n != before + 1), None)
    if problem:
        yield "NB201", *problem, evidence, fix


def _large_outputs(nb, path):
    fix = "clear the outputs before committing (nbdev-clean), or save the figure/table as a file or run artifact"
    for i, cell in enumerate(nb.cells):
        outputs = cell.get("outputs", [])
        if (size := len(json.dumps(outputs))) > MAX_CELL_OUTPUT_BYTES:
            kinds = sorted({k for o in outputs for k in o.get("data", {})} | {o.output_type for o in outputs
                                                                               if "data" not in o})
            yield ("NB601", i, f"outputs take {size / 1000:.0f} kB (limit {MAX_CELL_OUTPUT_BYTES // 1000} kB)",
                   f"{len(outputs)} output(s): {', '.join(kinds)}", fix)
    if (size := Path(path).stat().st_size) > MAX_NOTEBOOK_BYTES:
        yield ("NB601", None, f"notebook file is {size / 1e6:.1f} MB (limit {MAX_NOTEBOOK_BYTES / 1e6:.0f} MB)",
               f"{sum(len(c.get('outputs', [])) for c in nb.cells)} outputs in {len(nb.cells)} cells", fix)


def _syntax(parsed):
    for i, code in parsed.items():
        if code.tree is None:
            yield ("NB300", i, "cell does not parse as Python: the hidden-state check stops here", code.error,
                   "fix the syntax (a pipeline run fails on this cell), or make it a markdown/raw cell")


def _hidden_state(parsed):
    checked = list(takewhile(lambda item: item[1] is not None, ((i, c.tree) for i, c in parsed.items())))
    for cell, name, line in _undefined(checked)[1]:
        yield ("NB301", cell, f"`{name}` is used before any cell defines it",
               f"line {line}: {parsed[cell].line(line)}",
               f"define `{name}` in an earlier cell (restore it if it was deleted), then restart and run all")


def _export_uses_scratch(nb, parsed):
    exported = [(i, c.tree) for i, c in parsed.items() if c.tree and _is_export(nb.cells[i].source)]
    if not exported:
        return
    exported_names, missing = _undefined(exported)
    scratch, _ = _undefined([(i, c.tree) for i, c in parsed.items() if c.tree and i not in dict(exported)])
    for cell, name, line in missing:
        if name in scratch and name not in exported_names:
            yield ("NB801", cell, f"exported code uses `{name}`, which only a non-exported cell defines",
                   f"line {line}: {parsed[cell].line(line)}",
                   f"add `#| export` to the cell that defines `{name}`, or move the definition to an exported cell")


_GLOBAL_DRAWS = {  # module: functions that draw from its global, seedable generator
    "numpy.random": {"rand", "randn", "randint", "random", "random_sample", "ranf", "sample", "choice", "shuffle",
                     "permutation", "normal", "uniform", "binomial", "poisson", "exponential", "beta", "gamma",
                     "standard_normal", "multivariate_normal", "bytes"},
    "random": {"random", "randint", "randrange", "choice", "choices", "shuffle", "sample", "uniform", "gauss"},
    "torch": {"rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like"},
}
_SEEDS = {"numpy.random.seed": "numpy.random", "random.seed": "random", "torch.manual_seed": "torch",
          "torch.random.manual_seed": "torch"}
_GENERATORS = {"numpy.random.default_rng", "numpy.random.RandomState", "random.Random"}
_SKLEARN = {"train_test_split", "KFold", "StratifiedKFold", "ShuffleSplit", "StratifiedShuffleSplit",
            "RandomForestClassifier", "RandomForestRegressor", "ExtraTreesClassifier", "ExtraTreesRegressor",
            "GradientBoostingClassifier", "GradientBoostingRegressor", "HistGradientBoostingClassifier",
            "HistGradientBoostingRegressor", "MLPClassifier", "MLPRegressor", "KMeans", "MiniBatchKMeans",
            "SGDClassifier", "SGDRegressor", "DecisionTreeClassifier", "DecisionTreeRegressor", "IsolationForest",
            "make_classification", "make_regression", "make_blobs", "make_moons", "TSNE"}
_SHUFFLE_ONLY = {"KFold", "StratifiedKFold"}  # random only with shuffle=True
_ADVICE = {  # kind of unseeded call: (what is wrong, what to do)
    "numpy.random": ("draws from NumPy's global generator, which nothing above seeds",
                     "use rng = np.random.default_rng(SEED) and rng's methods (or np.random.seed(SEED) first)"),
    "random": ("draws from Python's global `random` generator, which nothing above seeds",
               "use rng = random.Random(SEED) and rng's methods (or random.seed(SEED) first)"),
    "torch": ("draws from torch's global generator, which nothing above seeds",
              "call torch.manual_seed(SEED) first, or pass generator=torch.Generator().manual_seed(SEED)"),
    "generator": ("creates a random generator without a seed", "pass a seed: default_rng(SEED), Random(SEED)"),
    "sklearn": ("is called without random_state, so each run differs",
                "pass random_state=SEED (a value from the parameters cell)"),
}


def _aliases(trees) -> dict[str, str]:
    """What each imported name stands for: `np` -> `numpy`, `RF` -> `sklearn.ensemble.RandomForestClassifier`."""
    out = {}
    for tree in trees:
        for node in _sorted(tree, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                if isinstance(node, ast.Import):
                    out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                elif node.module and not node.level:
                    out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _qualname(func: ast.expr, aliases: dict[str, str]) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    return ".".join([aliases.get(func.id, func.id), *reversed(parts)]) if isinstance(func, ast.Name) else ""


def _is_none(node: ast.expr | None) -> bool:
    return node is None or (isinstance(node, ast.Constant) and node.value is None)


def _unseeded_kind(name: str, call: ast.Call, seeded: set[str]) -> str | None:
    module, _, fn = name.rpartition(".")
    kwargs = {k.arg: k.value for k in call.keywords}
    shuffle = kwargs.get("shuffle")
    shuffle = shuffle.value if isinstance(shuffle, ast.Constant) else None  # None: not given, or not a literal
    if None in kwargs:  # `**options`: cannot tell what it sets
        return None
    if fn in _GLOBAL_DRAWS.get(module, ()) and module not in seeded and "generator" not in kwargs:
        return module
    if name in _GENERATORS and _is_none(call.args[0] if call.args else kwargs.get("seed")):
        return "generator"
    if (name.startswith("sklearn.") and fn in _SKLEARN and _is_none(kwargs.get("random_state"))
            and shuffle is not False and (fn not in _SHUFFLE_ONLY or shuffle is True)):
        return "sklearn"
    return None


def _unseeded(parsed):
    aliases = _aliases(c.tree for c in parsed.values() if c.tree)
    seeded: set[str] = set()  # modules whose global generator a call above seeds
    for i, code in parsed.items():
        for call in _sorted(code.tree, ast.Call) if code.tree else []:
            name = _qualname(call.func, aliases)
            if name in _SEEDS or name.rpartition(".")[2] in ("seed_everything", "set_seed"):
                seeded.update([_SEEDS[name]] if name in _SEEDS else _GLOBAL_DRAWS)
            elif kind := _unseeded_kind(name, call, seeded):
                yield ("NB401", i, f"{ast.unparse(call.func)}(...) {_ADVICE[kind][0]}",
                       f"line {call.lineno}: {code.line(call.lineno)}", _ADVICE[kind][1])


_PREPROCESSING = ("sklearn.preprocessing.", "sklearn.impute.", "sklearn.feature_extraction.",
                  "sklearn.decomposition.", "sklearn.feature_selection.")
_SPLITS = ("train_test_split", "split_indices")  # what a research notebook calls to split rows
_STATELESS = ("LabelEncoder", "FunctionTransformer", "PolynomialFeatures")  # learn nothing from the rows' values


def _fitted_before_split(parsed):
    """Preprocessing fitted on all rows, before the first split: its statistics include the test rows."""
    aliases = _aliases(c.tree for c in parsed.values() if c.tree)
    prepared, fits = set(), []  # names bound to a preprocessing object; fits seen before any split

    def learns(call: ast.expr) -> bool:
        name = _qualname(call.func, aliases) if isinstance(call, ast.Call) else ""
        return name.startswith(_PREPROCESSING) and name.rpartition(".")[2] not in _STATELESS

    def fitted(node: ast.Call, i: int, code: _Code) -> None:
        if not (isinstance(node.func, ast.Attribute) and node.func.attr in ("fit", "fit_transform")):
            return
        owner = node.func.value
        if (isinstance(owner, ast.Name) and owner.id in prepared) or learns(owner):
            fits.append(("NB402", i, f"{ast.unparse(node.func)}(...) learns statistics from every row, the test rows "
                         "included, before they are split off", f"line {node.lineno}: {code.line(node.lineno)}",
                         "split first, then fit on the training rows only (or put it in a Pipeline fitted on the "
                         "training split)"))

    for i, code in parsed.items():
        for node in _sorted(code.tree, (ast.Assign, ast.Call)) if code.tree else []:
            if isinstance(node, ast.Assign):
                targets = {t.id for t in node.targets if isinstance(t, ast.Name)}
                prepared = (prepared | targets) if learns(node.value) else (prepared - targets)
            elif _qualname(node.func, aliases).rpartition(".")[2] in _SPLITS:
                for inner in _sorted(node, ast.Call):  # split(scaler.fit_transform(X), y): fitted before the split
                    fitted(inner, i, code)
                yield from fits
                return
            else:
                fitted(node, i, code)


_PATH = re.compile(r"^(/[\w.@+-]+/|~[\w.-]*[/\\]|[A-Za-z]:[\\/])")


def _paths(nb, parsed):
    for i, code in parsed.items():
        if not code.tree or "injected-parameters" in nb.cells[i].metadata.get("tags", []):  # papermill wrote it
            continue
        # skipped: docstrings and bare strings, and strings that continue a path (f"{root}/data/", root + "/x/")
        skip = {id(n.value) for n in ast.walk(code.tree) if isinstance(n, ast.Expr)}
        skip |= {id(v) for n in ast.walk(code.tree) if isinstance(n, ast.JoinedStr) for v in n.values[1:]}
        skip |= {id(n.right) for n in ast.walk(code.tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add)}
        for node in _sorted(code.tree, ast.Constant):
            if isinstance(node.value, str) and id(node) not in skip and _PATH.match(node.value):
                yield ("NB501", i, f"hard-coded path {node.value[:80]!r} exists on one machine only",
                       f"line {node.lineno}: {code.line(node.lineno)}",
                       "make it a parameter (parameters cell / settings) or a path relative to the project")


_SECRET_NAME = re.compile(r"(^|_)(api_?key|secret(_?key)?|token|password|passwd|access_key|private_key)$", re.I)
_NOT_A_SECRET = re.compile(r"\s|^[<{$]|(?i:your|x{5}|\*{5})|^[A-Z][A-Z0-9_]*$")  # placeholders, env var names
_SECRET_FORMATS = {
    "an AWS access key id": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "a GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
    "a Slack token": re.compile(r"\bxox[baprs]-[A-Za-z0-9-]{10,}"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "an API secret key (sk-...)": re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"),
}
_SECRET_FIX = "revoke it (it is in the git history), clear it here, and read it at run time (os.environ / getpass)"


def _mask(secret: str) -> str:
    return f"{secret[:4]}... ({len(secret)} chars)"


def _named_values(tree: ast.Module):
    """(name, value) for assignments, keyword arguments and dict entries, in source order."""
    def name(t):
        if isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant):
            return str(t.slice.value)
        return getattr(t, "id", None) or getattr(t, "attr", None)
    pairs = []
    for n in ast.walk(tree):
        if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value:
            pairs += [(name(t), n.value) for t in (n.targets if isinstance(n, ast.Assign) else [n.target])]
        elif isinstance(n, ast.keyword):
            pairs.append((n.arg, n.value))
        elif isinstance(n, ast.Dict):
            pairs += [(k.value if isinstance(k, ast.Constant) else None, v) for k, v in zip(n.keys, n.values)]
    return sorted(pairs, key=lambda p: (p[1].lineno, p[1].col_offset))


def _texts(cell):
    yield "source", cell.source
    for output in cell.get("outputs", []):
        for value in [output.get("text", ""), *output.get("traceback", []), *output.get("data", {}).values()]:
            yield "output", value if isinstance(value, str) else json.dumps(value)


def _secrets(nb, parsed):
    for i, cell in enumerate(nb.cells):
        for where, text in _texts(cell):
            for kind, pattern in _SECRET_FORMATS.items():
                for m in pattern.finditer(text):
                    line = text.count("\n", 0, m.start()) + 1
                    yield ("NB701", i, f"{where} contains what looks like {kind}", f"{where} line {line}: "
                           f"{_mask(m[0])}", _SECRET_FIX)
        tree = parsed[i].tree if i in parsed else None
        for name, value in _named_values(tree) if tree else []:
            literal = value.value if isinstance(value, ast.Constant) and isinstance(value.value, str) else ""
            if (name and _SECRET_NAME.search(str(name)) and len(literal) >= 8 and not _NOT_A_SECRET.search(literal)
                    and not any(p.search(literal) for p in _SECRET_FORMATS.values())):
                yield ("NB701", i, f"`{name}` is set to a literal that looks like a secret",
                       f"line {value.lineno}: {name} = {_mask(literal)}", _SECRET_FIX)


# --- entry points --------------------------------------------------------------------------------------------

def _suppressed(source: str, rule: str) -> bool:
    for m in re.finditer(r"#\s*noqa\b(?::\s*([A-Z]+\d+(?:\s*,\s*[A-Z]+\d+)*))?", source, re.I):
        if not m[1] or rule in {code.strip().upper() for code in m[1].split(",")}:
            return True
    return False


def lint_notebook(path) -> list[Finding]:
    """Every finding for one notebook, by cell then rule, less those its `# noqa` comments and metadata opt out of."""
    nb = nbformat.read(str(path), as_version=4)
    language = nb.metadata.get("kernelspec", {}).get("language") or nb.metadata.get("language_info", {}).get("name")
    python = (language or "python").lower() == "python"
    parsed = {i: _parse(c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code"} if python else {}
    checks = [_parameters(nb), _execution_order(nb), _large_outputs(nb, path), _syntax(parsed),
              _hidden_state(parsed), _unseeded(parsed), _fitted_before_split(parsed), _paths(nb, parsed),
              _secrets(nb, parsed),
              _export_uses_scratch(nb, parsed)]
    ignored = set(nb.metadata.get("mlops_nb", {}).get("lint", {}).get("ignore", []))
    findings = [Finding(rule, RULES[rule][0], str(path), cell, message, evidence, fix)
                for rule, cell, message, evidence, fix in chain(*checks)
                if rule not in ignored and not (cell is not None and _suppressed(nb.cells[cell].source, rule))]
    return sorted(findings, key=lambda f: (-1 if f.cell is None else f.cell, f.rule))


def lint_paths(paths) -> list[Finding]:
    """Findings for each notebook given; a directory stands for the `*.ipynb` files under it (not checkpoints)."""
    findings = []
    for given in paths:
        if Path(given).is_dir():
            notebooks = sorted(p for p in Path(given).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        else:
            notebooks = [given]
        for notebook in notebooks:
            findings += lint_notebook(notebook)
    return findings


def at_or_above(findings, severity: str) -> list[Finding]:
    """The findings of `severity` or worse (info < warning < error)."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, not {severity!r}")
    return [f for f in findings if SEVERITIES.index(f.severity) >= SEVERITIES.index(severity)]


def to_json(findings) -> str:
    """The findings as a JSON list of objects, one per finding, with every field."""
    return json.dumps([asdict(f) for f in findings], indent=2)
