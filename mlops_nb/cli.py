"""`mlops-nb`: a thin command line over the library (build, lab, lint, clean, bento, settings, champion)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mlops_nb.settings import SettingsError, load_settings

__all__ = ["main"]


def _build(args) -> int:
    from mlops_nb.pipeline import build

    report = build(force=args.force, epochs=args.epochs, seed=args.seed)
    print(report)
    return 0


def _lab(args) -> int:
    from mlops_nb.lab import lab_argv, lab_environ
    from mlops_nb.settings import find_project_root

    root = find_project_root()
    argv = lab_argv(args.extra)
    os.chdir(root)
    os.execve(argv[0], argv, lab_environ(root))


def _lint(args) -> int:
    from mlops_nb.lint import overridden_parameters
    from mlops_nb.notebook_clean import clean_file
    from mlops_nb.pipeline import make_dag

    findings = [str(f) for f in overridden_parameters(make_dag())]
    root = load_settings().root
    findings += [f"{path.relative_to(root)}: not clean (a save in JupyterLab would change it): run `mlops-nb clean`"
                 for path in sorted((root / "notebooks").glob("*.ipynb")) if clean_file(path, check=True)]
    for finding in findings:
        print(finding)
    print(f"{len(findings)} problem(s) found" if findings else "no problems found", file=sys.stderr)
    return 1 if findings else 0


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
    build = commands.add_parser("build", help="build the DAG incrementally (same as `ploomber build -e "
                                              "mlops_nb.pipeline.make_dag`)")
    build.add_argument("--epochs", type=int, help="override [training] epochs for this build")
    build.add_argument("--seed", type=int, help="override [training] seed for this build")
    build.add_argument("--force", action="store_true", help="re-run every task")
    build.set_defaults(run=_build)
    lab = commands.add_parser("lab", help="start JupyterLab with the project's Jupyter configuration; extra "
                                          "arguments go to `jupyter lab`")
    lab.set_defaults(run=_lab, passes_args=True)
    commands.add_parser("lint", help="report notebook parameters a build would override, and notebooks that are "
                                     "not clean").set_defaults(run=_lint)
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
