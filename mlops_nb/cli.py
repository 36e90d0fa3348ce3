"""`mlops-nb`: a thin command line over the library (new, lab, lint, check-export, clean, bento, settings, ...)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from mlops_nb.settings import SettingsError, load_settings

__all__ = ["main"]


def _lab(args) -> int:
    from mlops_nb.lab import lab_argv, lab_environ
    from mlops_nb.settings import find_project_root

    root = find_project_root()
    argv = lab_argv(args.extra)
    os.chdir(root)
    os.execve(argv[0], argv, lab_environ(root))


def _lint(args) -> int:
    from mlops_nb.notebook_lint import at_or_above, lint_paths, to_json

    if args.paths:
        findings = lint_paths(args.paths)
    else:  # the project: its notebooks, plus the checks that need its DAG
        from mlops_nb.lint import overridden_parameters, unclean_notebooks
        from mlops_nb.pipeline import dag_for

        settings = load_settings()
        notebooks = sorted((settings.root / "notebooks").glob("*.ipynb"))
        findings = [replace(f, notebook=str(Path(f.notebook).relative_to(settings.root))) for f in lint_paths(notebooks)]
        findings += overridden_parameters(dag_for(settings), settings.root) + unclean_notebooks(notebooks, settings.root)
    failing = at_or_above(findings, args.fail_on)
    if args.json:
        print(to_json(findings))
    else:
        for finding in findings:
            print(finding)
        print(f"{len(findings)} finding(s), {len(failing)} at or above {args.fail_on}" if findings else
              "no findings", file=sys.stderr)
    return 1 if failing else 0


def _check_export(args) -> int:
    from mlops_nb.export_check import FIX, stale_exports

    root = load_settings().root
    stale = stale_exports(root)
    for item in stale:
        print(item)
    print(f"stale: run `{FIX}`" if stale else "the exported package matches the notebooks", file=sys.stderr)
    return 1 if stale else 0


def _new(args) -> int:
    from mlops_nb.scaffold import ScaffoldError, new_project

    try:
        root = new_project(args.dest, args.data, args.target)
    except ScaffoldError as error:
        print(f"mlops-nb new: {error}", file=sys.stderr)
        return 2
    commands = (root / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    print(f"made {root} (see its README.md). Build and test it:\n\n  cd {root}\n" +
          "".join(f"  {line}\n" for line in commands.splitlines()))
    return 0


def _clean(args) -> int:
    from mlops_nb.notebook_clean import clean_file

    paths = args.paths or sorted((load_settings().root / "notebooks").glob("*.ipynb"))
    changed = [str(p) for p in paths if clean_file(p, check=args.check)]
    for path in changed:
        print(("not clean: " if args.check else "cleaned: ") + path)
    return 1 if changed and args.check else 0


def _refresh_outputs(args) -> int:
    from mlops_nb.notebook_outputs import refresh_outputs

    refresh_outputs(args.paths or sorted((load_settings().root / "notebooks").glob("*.ipynb")))
    return 0


def _bento(args) -> int:
    from mlops_nb.serving.bento import build_bento, import_champion

    model = import_champion()
    bento = build_bento(gpu=args.gpu)
    print(json.dumps({"bento_tag": str(bento.tag), "model_tag": str(model.tag),
                      "model_version": model.info.metadata["model_version"], "gpu": args.gpu}, indent=2))
    return 0


def _settings(args) -> int:
    print(json.dumps(load_settings().model_dump(mode="json"), indent=2))
    return 0


def _champion(args) -> int:
    from mlops_nb.registry import champion

    settings = load_settings()
    version = champion(settings.registry.model_name, settings)
    if version is None:
        print(f"{settings.registry.model_name}: no champion yet", file=sys.stderr)
        return 1
    tags = {k: v for k, v in version.tags.items() if k.startswith("mlops_nb.")}
    print(json.dumps({"model_name": version.name, "version": version.version, "run_id": version.run_id,
                      "tags": tags}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlops-nb", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="make a project on your own tabular classification data (CSV or Parquet)")
    new.add_argument("dest", type=Path, help="the new project's folder (new or empty)")
    new.add_argument("--data", type=Path, required=True, help="a CSV or Parquet file: numeric features and a label")
    new.add_argument("--target", required=True, help="the label column (integer or string labels)")
    new.set_defaults(run=_new)
    lab = commands.add_parser("lab", help="start JupyterLab with the project's Jupyter configuration; extra "
                                          "arguments go to `jupyter lab`")
    lab.set_defaults(run=_lab, passes_args=True)
    lint = commands.add_parser("lint", help="production-readiness findings for notebooks (default: the project's, "
                                            "with the checks that need its DAG)")
    lint.add_argument("paths", nargs="*", type=Path)
    lint.add_argument("--json", action="store_true", help="findings as JSON (rule, severity, notebook, cell, ...)")
    lint.add_argument("--fail-on", choices=["error", "warning", "info"], default="warning",
                      help="exit 1 when a finding has this severity or a higher one (default: warning)")
    lint.set_defaults(run=_lint)
    commands.add_parser("check-export", help="is the nbdev export current? (exit 1 naming each stale module); a "
                                             "build runs the same check first").set_defaults(run=_check_export)
    clean = commands.add_parser("clean", help="clean notebooks as JupyterLab's save does (default: notebooks/)")
    clean.add_argument("paths", nargs="*", type=Path)
    clean.add_argument("--check", action="store_true", help="only report notebooks that are not clean (exit 1)")
    clean.set_defaults(run=_clean)
    refresh = commands.add_parser("refresh-outputs", help="re-run notebooks (default: all, in order) in a throw-away "
                                                          "state and store their outputs, the notebook tests' "
                                                          "reference")
    refresh.add_argument("paths", nargs="*", type=Path)
    refresh.set_defaults(run=_refresh_outputs)
    bento = commands.add_parser("bento", help="import the registry's champion and build its bento")
    bento.add_argument("--gpu", action="store_true", help="the CUDA variant: onnxruntime-gpu, a CUDA base image, "
                                                          "device = cuda")
    bento.set_defaults(run=_bento)
    commands.add_parser("settings", help="print the validated settings").set_defaults(run=_settings)
    commands.add_parser("champion", help="show the registry's champion and why it was promoted").set_defaults(
        run=_champion)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_args", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return args.run(args)
    except SettingsError as e:
        print(f"mlops-nb: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
