"""`mlops-nb`: a thin command line over the library (build, settings, champion)."""

from __future__ import annotations

import argparse
import json
import sys

from mlops_nb.settings import SettingsError, load_settings

__all__ = ["main"]


def _build(args) -> int:
    from mlops_nb.pipeline import build

    report = build(force=args.force, epochs=args.epochs, seed=args.seed)
    print(report)
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
    commands.add_parser("settings", help="print the validated settings").set_defaults(run=_settings)
    commands.add_parser("champion", help="show the registry's champion and why it was promoted").set_defaults(
        run=_champion)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except SettingsError as e:
        print(f"mlops-nb: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
