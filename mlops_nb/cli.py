"""`mlops-nb`: a thin command line over the library (new, lab, lint, check-export, clean, bento, settings, ...)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from mlops_nb.backup import BackupError
from mlops_nb.edge import EdgeError
from mlops_nb.ledger import LedgerError
from mlops_nb.orchestrators import OrchestratorError
from mlops_nb.privacy import PrivacyError
from mlops_nb.registry import RegistryError
from mlops_nb.settings import SettingsError, load_settings
from mlops_nb.streaming import StreamError
from mlops_nb.traffic import SHIFTS

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
        root = settings.root
        findings = [replace(f, notebook=str(Path(f.notebook).relative_to(root))) for f in lint_paths(notebooks)]
        findings += overridden_parameters(dag_for(settings), root) + unclean_notebooks(notebooks, root)
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


def _deploy(args) -> int:
    from mlops_nb.products import write_json
    from mlops_nb.serving.bento import DEPLOYED, deploy

    settings = load_settings()
    model, bento = deploy(args.version, settings, gpu=args.gpu)
    deployed = {"bento_tag": str(bento.tag), "model_tag": str(model.tag),
                "model_version": model.info.metadata["model_version"],
                "shadow_version": model.info.labels.get("shadow_version"),
                "canary_version": model.info.labels.get("canary_version"),
                "fallback_version": model.info.labels.get("fallback_version"), "gpu": args.gpu}
    write_json(settings.products_dir / DEPLOYED, {**deployed, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    print(json.dumps(deployed, indent=2))
    return 0


def _predict(args) -> int:
    from mlops_nb.batch import BatchInputError, predict_file

    try:
        if args.engine == "spark":  # pyspark is the optional `spark` extra: imported only when asked for
            from mlops_nb.spark import predict_with_spark

            summary = predict_with_spark(args.input, args.output, version=args.model, rejected=args.rejected,
                                         master=args.spark_master)
        else:
            summary = predict_file(args.input, args.output, version=args.model, rejected=args.rejected,
                                   chunk_rows=args.chunk_rows)
    except BatchInputError as error:
        print(f"mlops-nb predict: {error}", file=sys.stderr)
        return 2
    if summary.rejected:
        print(f"mlops-nb predict: {summary.rejected:,} of {summary.rows:,} rows REJECTED (not scored), each with its "
              f"reason: {summary.rejected_path}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(f"{summary.rows:,} rows: {summary.scored:,} scored -> {summary.output}, {summary.rejected:,} rejected -> "
              f"{summary.rejected_path}; {summary.rows_per_s:,.0f} rows/s; model version {summary.model_version}")
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


def _entry_line(entry) -> str:
    forced = " (forced past failed gates)" if entry.forced else ""
    return (f"#{entry.seq} {entry.time} {entry.actor}: {entry.alias} {entry.from_version or '-'} -> "
            f"{entry.to_version or '-'}{forced}: {entry.reason}")


def _promote(args) -> int:
    from mlops_nb.registry import promote

    settings = load_settings()
    result, entry = promote(settings.registry.model_name, args.version, reason=args.reason, force=args.force,
                            settings=settings)
    if args.json:
        print(json.dumps({"promoted": entry is not None, "gates": result.checks,
                          "entry": entry.model_dump(mode="json") if entry else None}, indent=2))
    else:
        for check in result.checks:
            print(("PASS " if check["passed"] else "FAIL ") + check["detail"])
        print(_entry_line(entry) if entry else f"not promoted: {result.reason}. Promote it anyway with --force "
              "(the reason and the failed gates go into the ledger)")
    return 0 if entry else 1


def _rollback(args) -> int:
    from mlops_nb.registry import rollback

    settings = load_settings()
    entry = rollback(settings.registry.model_name, reason=args.reason, settings=settings)
    print(entry.model_dump_json(indent=2) if args.json else _entry_line(entry) +
          "\nserve it: `mlops-nb deploy` (builds the champion's bento; a ploomber build does not see alias moves)")
    return 0


def _history(args) -> int:
    from mlops_nb.ledger import entries, verify

    settings = load_settings()
    ledger = entries(settings.registry.model_name, settings)
    problems = verify(settings.registry.model_name, settings) if args.verify else []
    if args.json:
        print(json.dumps({"entries": [e.model_dump(mode="json") for e in ledger],
                          **({"verified": not problems, "problems": problems} if args.verify else {})}, indent=2))
    else:
        for entry in ledger:
            print(_entry_line(entry))
        if args.verify:
            print("\n".join(problems) if problems else f"chain verified: {len(ledger)} entries, every link holds")
    return 1 if problems else 0


def _status(args) -> int:
    from mlops_nb.ledger import entries
    from mlops_nb.registry import CHALLENGER, CHAMPION, version_card
    from mlops_nb.serving.bento import last_deployed
    from mlops_nb.tracking import connect

    settings = load_settings()
    name, products = settings.registry.model_name, settings.products_dir
    ledger = entries(name, settings)
    aliases = connect(settings).get_registered_model(name).aliases if ledger else {}

    def card(alias):
        version = aliases.get(alias)
        return version_card(name, version, settings).model_dump(mode="json", include={
            "model_version", "variant", "test_accuracy", "run_id"}) if version else None

    registration = products / "register/registration.json"  # the last build's register task (partial builds too)
    deployed = last_deployed(products)
    status = {"model_name": name, "champion": card(CHAMPION), "challenger": card(CHALLENGER),
              "last_build": json.loads(registration.read_text()) if registration.is_file() else None,
              "serving": json.loads(deployed.read_text()) if deployed else None,
              "last_ledger_entry": ledger[-1].model_dump(mode="json") if ledger else None}
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"model       {name}")
    for alias in (CHAMPION, CHALLENGER):
        found = status[alias]
        print(f"{alias:<11} " + (f"v{found['model_version']} ({found['variant']}, test accuracy "
                                 f"{found['test_accuracy']:.4f}, run {found['run_id'][:8]})" if found else "none"))
    build = status["last_build"]
    print("last build  " + (f"registered v{build['version']}, " + ("promoted" if build["promoted"] else
                                                                  f"not promoted: {build['reason']}")
                            if build else "none (run `ploomber build`)"))
    serving = status["serving"]
    print("serving     " + (f"bento {serving['bento_tag']} with v{serving['model_version']}" +
                            "".join(f", {role} v{serving[f'{role}_version']}" for role in ("shadow", "canary")
                                    if serving.get(f"{role}_version")) +
                            (f" (deployed {serving['time']})" if serving.get("time") else " (the build's)")
                            if serving and serving.get("bento_tag") else "no bento built (`mlops-nb deploy`)"))
    print("ledger      " + (_entry_line(ledger[-1]) if ledger else "empty"))
    return 0


def _compare_evidence(settings, compared: dict) -> None:
    """What `mlops-nb readiness` reads for its A/B item: the last comparison, with when it was made."""
    from mlops_nb.products import write_json

    write_json(settings.products_dir / "evidence" / "compare.json", {**compared, "checked_at": time.time()})


def _canary(verdict, settings, args) -> int:
    from mlops_nb.canary_verdict import apply_verdict, table

    done, refused = apply_verdict(verdict, settings) if args.apply and verdict.verdict else (None, False)
    _compare_evidence(settings, {**verdict.to_dict(), "applied": done})
    if args.json:
        print(json.dumps({**verdict.to_dict(), "applied": done}, indent=2))
    else:
        print(table(verdict) + (f"\napplied  {done}" if done else ""))
    return 3 if refused else verdict.exit_code


def _compare(args) -> int:
    from mlops_nb.canary_verdict import judge_canary
    from mlops_nb.compare import compare_shadow, read_labels

    settings = load_settings()
    log = args.log or settings.path(settings.monitoring.prediction_log)
    try:
        labels = read_labels(args.labels) if args.labels else None
        verdict = judge_canary(log, labels, settings)
        if verdict.canary is not None:
            return _canary(verdict, settings, args)
        if args.apply:
            raise ValueError(f"--apply acts on a canary verdict, and {log} holds no canary traffic")
        result = compare_shadow(log, labels)
    except (OSError, ValueError) as error:
        print(f"mlops-nb compare: {error}", file=sys.stderr)
        return 2
    if result.requests:
        _compare_evidence(settings, result.to_dict())
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif result.requests:
        def versions(counts):
            return ", ".join(f"v{v}" for v in sorted(counts))

        print(f"prediction log {log}\nchampion {versions(result.champion_versions)} against shadow challenger "
              f"{versions(result.challenger_versions)}: {result.requests} requests, {result.rows} rows")
        print(f"agreement   {result.agreement:.4f} ({result.agreeing_rows} of {result.rows} rows answer the same "
              "label)")
        if result.labelled_rows:
            lift = result.challenger_accuracy - result.champion_accuracy
            print(f"accuracy    champion {result.champion_accuracy:.4f}, challenger {result.challenger_accuracy:.4f} "
                  f"({lift:+.4f}) on {result.labelled_rows} labelled rows")
        else:
            print("accuracy    no labels joined" + (f" (none of {args.labels} matches a compared row)"
                                                    if args.labels else ": pass --labels FILE once they arrive"))
        if result.unpaired:
            print(f"note: {result.unpaired} shadow records have no champion record in this log")
    if not result.requests:
        print(f"no shadow-scored requests in {log}: set [serving] shadow_fraction above 0, run `mlops-nb deploy` "
              "while the registry's challenger is another version than the champion, and serve", file=sys.stderr)
        return 1
    return 0


def _readiness(args) -> int:
    from mlops_nb.products import atomic_path
    from mlops_nb.readiness import readiness
    from mlops_nb.readiness_report import to_html, to_text

    report = readiness(load_settings())
    if args.html:
        with atomic_path(args.html) as tmp:
            tmp.write_text(to_html(report))
    print(json.dumps(report.to_dict(), indent=2) if args.json else to_text(report))
    if args.html:
        print(f"report {args.html}", file=sys.stderr)
    return report.exit_code


def _reproduce(args) -> int:
    from mlops_nb.reproduce import ReproduceRefused, reproduce

    settings = load_settings()
    print(f"reproduce {settings.registry.model_name} v{args.version}: checking what its run recorded, then rebuilding "
          "in a temporary workspace from its commit, data snapshot and build settings ...", file=sys.stderr)
    try:
        result = reproduce(args.version, settings, keep=args.keep)
    except ReproduceRefused as refused:
        if args.json:
            print(json.dumps({"reproduced": False, "refused": refused.reasons}, indent=2))
        print("refused: " + "\n         ".join(refused.reasons), file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"reproduced": result.matched, **asdict(result)}, indent=2))
    else:
        for check in result.checks:
            shown = [str(check[k])[:16] for k in ("recorded", "rebuilt")]
            print(f"{'MATCH' if check['match'] else 'DIFF '} {check['what']:<36} {shown[0]:<16} " +
                  ("" if check["match"] else f"rebuilt {shown[1]}"))
        for warning in result.warnings:
            print(f"note: {warning}")
        same = sum(c["match"] for c in result.checks)
        print(f"{'reproduced' if result.matched else 'NOT reproduced'}: {same} of {len(result.checks)} figures "
              f"match, commit {result.commit[:12]}, rebuilt in {result.seconds:.0f} s")
    return 0 if result.matched else 1


def _moment(value: str) -> float:
    """A Unix time from a number of seconds, ISO 8601 (UTC when no zone is given) or a duration back from now (30m,
    6h, 2d)."""
    from datetime import datetime, timezone

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value.replace(".", "", 1).isdigit():
        return float(value)
    if value[:-1].replace(".", "", 1).isdigit() and value[-1:] in units:
        return time.time() - float(value[:-1]) * units[value[-1]]
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a Unix time, an ISO 8601 time (2026-11-27T08:00) or a "
                                         "duration back from now (30m, 6h, 2d)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def _monitor(args) -> int:
    from mlops_nb.drift import check, record_verdict
    from mlops_nb.monitoring import log_files

    settings = load_settings()
    files = [f for log in (args.log or [settings.path(settings.monitoring.prediction_log)]) for f in log_files(log)]
    if args.labels:
        return _monitor_accuracy(args, settings, files)
    report = None
    try:
        if args.no_report:
            verdict = check(settings, files, since=args.since, until=args.until)
        else:
            from papermill.exceptions import PapermillExecutionError

            from mlops_nb.drift_report import render

            try:
                verdict, report = render(settings, files, settings.products_dir / "monitor", since=args.since,
                                         until=args.until)
            except PapermillExecutionError as error:
                raise ValueError(f"the report notebook failed: {error.ename}: {error.evalue}") from None
    except (OSError, ValueError, KeyError) as error:
        print(f"mlops-nb monitor: {error}", file=sys.stderr)
        return 2
    written = record_verdict(verdict, settings)
    if report:
        from mlops_nb.drift_report import log_report

        written.update(report=str(report.html), report_run=log_report(settings, verdict, report))
    if args.json:
        print(json.dumps({**verdict.to_dict(), **written}, indent=2))
        return verdict.exit_code
    w = verdict.window
    reasons = verdict.brief()
    print(f"{verdict.status.upper()}: " + (reasons[0] if reasons else ""))
    for reason in reasons[1:]:
        print(f"  {reason}")
    print(f"window {w['rows']} rows in {w['records']} records, versions {', '.join(w['versions']) or 'none'}, "
          f"{len(w['files'])} file(s), {w['seconds']:.1f} s" + (f", {w['torn_lines']} torn line(s) skipped"
                                                                  if w["torn_lines"] else ""))
    print(f"evidence {written['evidence']}" + (f", flag {written['flag']}" if written["flag"] else "") +
          (f", gauge {written['gauge']}" if written["gauge"] else ""))
    if report:
        print(f"report {written['report']} (MLflow run {written['report_run']})")
    return verdict.exit_code


def _monitor_accuracy(args, settings, files: list[Path]) -> int:
    from mlops_nb.accuracy import check_accuracy, record_accuracy

    try:
        verdict = check_accuracy(settings, files, args.labels, since=args.since, until=args.until)
    except (OSError, ValueError, KeyError) as error:
        print(f"mlops-nb monitor: {error}", file=sys.stderr)
        return 2
    evidence = record_accuracy(verdict, settings)
    if args.json:
        print(json.dumps({**verdict.to_dict(), "evidence": str(evidence)}, indent=2))
        return verdict.exit_code
    print(f"{verdict.status.upper()}: {verdict.reasons[0]}")
    for reason in verdict.reasons[1:]:
        print(f"  {reason}")
    metric = verdict.thresholds["metric"]
    print(f"\n{'version':<8} {'window (UTC)':<36} {'rows':>9} {'labelled':>9} {metric:>10} {'registered':>10} "
          f"{'drop':>8}  verdict")
    for v in verdict.versions:
        for w in v.windows[-10:]:
            score, drop = ("-", "-") if w.score is None else (f"{w.score:.4f}", f"{w.drop:+.4f}")
            print(f"v{v.model_version:<7} {w.start + ' .. ' + w.end:<36} {w.rows:>9} {w.labelled:>9} {score:>10} "
                  f"{v.registered:>10.4f} {drop:>8}  {w.verdict}")
        if len(v.windows) > 10:
            print(f"v{v.model_version:<7} ... {len(v.windows) - 10} earlier windows in the evidence")
    j = verdict.joined
    print(f"\nlabels {j['labels']} from {j['labels_file']} ({j['duplicate_labels']} given twice: the last counts), "
          f"{j['labelled_rows']} of {j['answered_rows']} answered rows labelled; {len(j['files'])} log file(s), "
          f"{j['seconds']:.1f} s" + (f", {j['torn_lines']} torn line(s) skipped" if j["torn_lines"] else ""))
    print(f"evidence {evidence}")
    return verdict.exit_code


def _log(args) -> int:
    from mlops_nb.log_admin import erase, prune

    settings = load_settings()
    m = settings.monitoring
    log = args.log or settings.path(m.prediction_log)
    if args.action == "prune" and (args.request_id or args.subject):
        print("mlops-nb log prune: removes by age ([monitoring] retention_days); --request-id and --subject are for "
              "`log erase`", file=sys.stderr)
        return 2
    if args.action == "prune" and not m.retention_days:
        print("[monitoring] retention_days = 0: every record is kept, nothing to prune", file=sys.stderr)
        return 0
    if args.action == "erase" and not (args.request_id or args.subject):
        print("mlops-nb log erase: give --request-id ID or --subject KEY (each repeatable)", file=sys.stderr)
        return 2
    if args.action == "erase" and args.subject and "subject" in m.drop_fields:
        print("note: [monitoring] drop_fields has subject: records written since hold none and are found only by "
              "--request-id", file=sys.stderr)
    counts = (erase(settings, log, args.request_id or [], args.subject or []) if args.action == "erase"
              else prune(settings, log))
    for path, (removed, kept) in counts.items():
        print(f"{path}: removed {removed}, kept {kept}" + (" (file deleted)" if removed and not kept else ""))
    print(f"removed {sum(r for r, _ in counts.values())} record(s) in {len(counts)} file(s) of {log}" if counts else
          f"no prediction log at {log}: nothing to remove")
    return 0


def _traffic(args) -> int:
    from mlops_nb.traffic import TrafficError, run

    settings = load_settings()
    key = os.environ.get(settings.serving.api_key_env) if settings.serving.api_key_env else None
    try:
        sent = run(settings, args.url.rstrip("/"), rows=args.rows, shift=args.shift, size=args.size, seed=args.seed,
                   batch=args.batch, concurrency=args.concurrency, api_key=key)
    except (TrafficError, ValueError) as error:
        print(f"mlops-nb traffic: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(sent, indent=2))
    else:
        answers = ", ".join(f"{status}: {n}" for status, n in sorted(sent["status"].items(), key=str))
        shift = sent["shift"] + (f" {sent['size']:g}" if sent["shift"] != "none" else "")
        print(f"sent {sent['rows']} rows ({shift}) in {sent['requests']} requests to v{sent['model_version']}, "
              f"{sent['finished'] - sent['started']:.1f} s; answers {answers}")
        print(f"judge this window: mlops-nb monitor --since {sent['started']:.3f}")
    return 0 if set(sent["status"]) <= {200} else 1


def _stream(args) -> int:
    from mlops_nb.streaming import run_stream

    summary = run_stream(load_settings(), input=args.input, output=args.output, url=args.redis_url, model=args.model,
                         consumer=args.consumer)
    print(json.dumps(asdict(summary)))
    return 0


def _export(args) -> int:
    if args.engine == "edge":
        from mlops_nb.edge import export_edge, listing

        print(listing(export_edge(load_settings(), args.outdir, args.model or "champion")))
        return 0
    if args.model is not None:
        print("mlops-nb export: --model is for `export edge` only", file=sys.stderr)
        return 2
    if args.engine == "alerts":
        from mlops_nb.alerts import export_alerts

        try:
            print("\n".join(map(str, export_alerts(load_settings(), args.outdir))))
        except OSError as error:
            print(f"mlops-nb export: cannot write the alerts to {args.outdir}: {error}", file=sys.stderr)
            return 2
        return 0
    from mlops_nb.orchestrators import export

    files, warnings = export(load_settings(), args.engine, args.outdir, args.runner)
    for warning in warnings:
        print(f"mlops-nb export: warning: {warning}", file=sys.stderr)
    print("\n".join(map(str, files)))
    return 0


def _run_task(args) -> int:
    from mlops_nb.orchestrators import run_task

    products = run_task(load_settings(), args.name, args.params_sha256)
    print(f"task {args.name} built; products in {products}", file=sys.stderr)
    return 0


def _backup(args) -> int:
    from mlops_nb.backup import backup

    done = backup(load_settings(), args.file)
    print(f"backed up {done['members']} members ({done['size']:,} bytes, sha256 {done['sha256'][:16]}...) to "
          f"{done['archive']}, read back and verified; champion v{done['champion']}, bento {done['bento_tag']}")
    for note in done["left_out"]:
        print(f"not in the backup: {note}", file=sys.stderr)
    return 0


def _restore(args) -> int:
    from mlops_nb.backup import restore

    done = restore(args.file, args.dest)
    print(f"verified {len(done['members'])} members of {args.file} against its manifest (size and SHA-256 each)\n"
          f"restored the project backed up {done['time']} from {done['root']} (commit {done['git_commit']}) into "
          f"{Path(args.dest).absolute()}; registry artifact locations moved there; champion v{done['champion']}")
    if done["bento"]:
        print(f"bento {done['bento']['tag']} imported into the BentoML home {done['bento_home']}\n"
              f"serve it: cd {args.dest} && bentoml serve {done['bento']['tag']}")
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
    deploy = commands.add_parser("deploy", help="build the bento for a registered version (default: the champion)")
    deploy.add_argument("version", nargs="?", default="champion", help="a version number, or champion")
    deploy.add_argument("--gpu", action="store_true", help="the CUDA variant: onnxruntime-gpu, a CUDA base image, "
                                                           "device = cuda")
    deploy.set_defaults(run=_deploy)
    predict = commands.add_parser("predict", help="score a CSV or Parquet file with a registered version, in chunks; "
                                                  "rejected rows go to a file with their reason")
    # paths stay strings: with --engine spark they may be URIs (s3a://bucket/key), which Path would rewrite
    predict.add_argument("input", help="rows to score: .csv or .parquet, with the model's feature columns")
    predict.add_argument("output", help="scored rows: .csv or .parquet (written when the run completes)")
    predict.add_argument("--model", default="champion", help="a version number, or champion (default)")
    predict.add_argument("--rejected", help="rejected rows (default: OUTPUT's <stem>.rejected.<ext>)")
    predict.add_argument("--chunk-rows", type=int, default=65536, help="rows read and scored at a time (about, "
                                                                        "for CSV; default 65536)")
    predict.add_argument("--engine", choices=("local", "spark"), default="local",
                         help="local: this process, in chunks (default); spark: a Spark job (the `spark` extra), "
                              "writing OUTPUT and the rejected rows as folders of part files")
    predict.add_argument("--spark-master", help="with --engine spark: the master URL (default: what spark-submit "
                                                "set, else local[*])")
    predict.add_argument("--json", action="store_true", help="the summary as JSON")
    predict.set_defaults(run=_predict)
    commands.add_parser("settings", help="print the validated settings").set_defaults(run=_settings)
    commands.add_parser("champion", help="show the registry's champion and why it was promoted").set_defaults(
        run=_champion)
    promote = commands.add_parser("promote", help="make VERSION the champion if it passes the gates (a ledger entry)")
    promote.add_argument("version")
    promote.add_argument("--reason", required=True, help="why, in words: it goes into the ledger")
    promote.add_argument("--force", action="store_true", help="promote even though a gate fails (recorded as forced)")
    promote.add_argument("--json", action="store_true")
    promote.set_defaults(run=_promote)
    rollback = commands.add_parser("rollback", help="make the previous champion the champion again (a ledger entry)")
    rollback.add_argument("--reason", required=True, help="why, in words: it goes into the ledger")
    rollback.add_argument("--json", action="store_true")
    rollback.set_defaults(run=_rollback)
    history = commands.add_parser("history", help="the promotion ledger: every alias move, oldest first")
    history.add_argument("--verify", action="store_true", help="check the hash chain (exit 1 when a link breaks)")
    history.add_argument("--json", action="store_true")
    history.set_defaults(run=_history)
    status = commands.add_parser("status", help="champion, challenger, last build, serving version, last ledger entry")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=_status)
    compare = commands.add_parser("compare", help="champion against the challenger from the prediction log. A "
                                  "canary: each version's failure rate and, with labels, its [gates] metric with an "
                                  "interval and a test of the difference at [serving] canary_alpha, and a verdict "
                                  "(roll back when the failure rate exceeds the champion's by more than "
                                  "canary_max_excess_failure_rate over canary_min_requests, or when significantly "
                                  "worse; promote when significantly better; keep otherwise, also under [monitoring] "
                                  "min_labelled_rows): exit 0 promote or keep, 1 roll back, 2 cannot judge, 3 the "
                                  "gates refused --apply's promotion. A shadow: agreement, and accuracy with labels")
    compare.add_argument("--log", type=Path, help="a prediction log, with its rotated PATH.N siblings (default: "
                                                  "[monitoring] prediction_log)")
    compare.add_argument("--labels", type=Path, help="true labels that arrived later: CSV or JSON lines with "
                                                     "request_id, label and optionally row (default 0)")
    compare.add_argument("--apply", action="store_true", help="act on a canary verdict: promote = `mlops-nb promote` "
                         "of the canary (the gates apply); roll back = canary-stop.json beside the log (the served "
                         "process stops routing to the canary) and a ledger entry removing the challenger alias, "
                         "with the figures; keep = nothing")
    compare.add_argument("--json", action="store_true")
    compare.set_defaults(run=_compare)
    ready = commands.add_parser("readiness", help="the production-readiness checklist for the champion, computed from "
                                "products/evidence/, the registry and the project: pass, fail, not applicable or not "
                                "checked per item with its evidence and fix (exit 1 when a required item fails)")
    ready.add_argument("--json", action="store_true", help="the items as JSON")
    ready.add_argument("--html", type=Path, help="also write the report as an HTML page to this file")
    ready.set_defaults(run=_readiness)
    reproduce = commands.add_parser("reproduce", help="rebuild a registered version from its commit, snapshot and "
                                                      "settings in a clean workspace; compare hashes and metrics "
                                                      "(exit 0 match, 1 differ, 2 refused)")
    reproduce.add_argument("version")
    reproduce.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    reproduce.add_argument("--json", action="store_true")
    reproduce.set_defaults(run=_reproduce)
    monitor = commands.add_parser("monitor", help="data and prediction drift of the prediction log against each "
                                  "version's reference profile, with an HTML report logged to MLflow: exit 0 no "
                                  "drift, 1 drift (flag written), 2 cannot judge. With --labels: accuracy on "
                                  "production data instead")
    monitor.add_argument("--log", action="append", type=Path, help="a prediction log (repeatable; each with its "
                         "rotated PATH.N siblings, oldest first); default: [monitoring] prediction_log")
    monitor.add_argument("--since", type=_moment, help="only records answered from then: Unix time, ISO 8601 (UTC "
                         "unless zoned) or a duration back from now (30m, 6h, 2d)")
    monitor.add_argument("--until", type=_moment, help="only records answered before then (same forms)")
    monitor.add_argument("--no-report", action="store_true", help="the verdict only: no report notebook, HTML or "
                         "MLflow run (faster, no kernel)")
    monitor.add_argument("--labels", type=Path, help="true labels that arrived later (CSV with header request_id,"
                         "label[,row], or JSON lines with those keys; row defaults to 0), joined to the logged answers "
                         "by request id and row. Then monitor checks accuracy instead of drift (run it again without "
                         "--labels for drift): per version and window of [monitoring] accuracy_window_hours (aligned "
                         "to UTC midnight for 24), the [gates] metric on the labelled rows against the version's "
                         "registered test figure; a window is degraded when it is lower by more than "
                         "max_accuracy_drop over at least min_labelled_rows rows. Shadow answers are not counted; a "
                         "fallback answer counts for the version that gave it. Exit 0 ok, 1 a version's latest judged "
                         "window degraded, 2 cannot judge (no window with enough labels) or bad input; evidence in "
                         "products/evidence/monitor-accuracy.json")
    monitor.add_argument("--json", action="store_true", help="print the verdict and its evidence as JSON")
    monitor.set_defaults(run=_monitor)
    log = commands.add_parser("log", help="erase: remove a person's records (by request id or subject key) from "
                              "every prediction-log file; prune: remove records older than [monitoring] "
                              "retention_days. Prints how many per file")
    log.add_argument("action", choices=["erase", "prune"])
    log.add_argument("--request-id", action="append", help="erase: the records of this request (repeatable)")
    log.add_argument("--subject", action="append", help="erase: the records of this X-Subject key, as sent (hashed "
                     "with the salt when [monitoring] hash_fields has subject); repeatable")
    log.add_argument("--log", type=Path, help="the prediction log, with its rotated PATH.N files (default: "
                                              "[monitoring] prediction_log)")
    log.set_defaults(run=_log)
    traffic = commands.add_parser("traffic", help="send the build's test rows, resampled and optionally shifted, to a "
                                  "served API (drift demos and tests): exit 0 all answered 200, 1 some not, 2 refused")
    traffic.add_argument("--url", required=True, help="the served API, e.g. http://127.0.0.1:3000")
    traffic.add_argument("--rows", type=int, default=1000)
    traffic.add_argument("--shift", choices=SHIFTS, default="none", help="offset: every value + size x the "
                         "feature range; noise: Gaussian, sd size x each feature's spread; class-mix: a share size "
                         "of the rows from the most common class (clipped to the served range)")
    traffic.add_argument("--size", type=float, default=0.1)
    traffic.add_argument("--seed", type=int, default=0)
    traffic.add_argument("--batch", type=int, default=16, help="rows per request")
    traffic.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    traffic.add_argument("--json", action="store_true")
    traffic.set_defaults(run=_traffic)
    stream = commands.add_parser("stream", help="score events from a Redis Stream in a consumer group, in "
                                 "micro-batches; each result once to the output stream, malformed events to the "
                                 "dead-letter stream; SIGTERM finishes the batch in hand")
    stream.add_argument("--redis-url", help="default: the environment variable [streaming] redis_url_env names "
                                            "(prefer it: a URL here shows its password in the process list)")
    stream.add_argument("--input", required=True, help="the stream of events: fields id and request (a /predict body)")
    stream.add_argument("--output", required=True, help="the stream of results: id, result (/predict's answer), "
                                                        "model_version, latency_ms")
    stream.add_argument("--model", default="champion", help="a version number, or champion (default)")
    stream.add_argument("--consumer", help="this consumer's name in the group (default: HOSTNAME-PID)")
    stream.set_defaults(run=_stream)
    export = commands.add_parser("export", help="write the DAG for an orchestrator: an Airflow 3 DAG file or a "
                                 "Kubeflow Pipelines 2 pipeline (and the pipeline image's Dockerfile); every task runs "
                                 "`mlops-nb run-task NAME`. edge: a registered version as a folder to run without the "
                                 "project (ONNX and ORT files, a numpy + onnxruntime runner, a browser page). alerts: "
                                 "Prometheus alerting rules from [alerts] and a scrape config for the bento's /metrics")
    export.add_argument("engine", choices=["airflow", "kfp", "edge", "alerts"])
    export.add_argument("outdir", type=Path)
    export.add_argument("--runner", choices=["kubernetes", "local"], default="kubernetes",
                        help="kubernetes: each task a pod of [orchestrator] image (default); local: a process in this "
                             "virtual environment, for the engine's local runner")
    export.add_argument("--model", help="edge: a version number, or champion (default)")
    export.set_defaults(run=_export)
    run_task = commands.add_parser("run-task", help="build one task of the DAG as `ploomber build` would (forced), "
                                   "products on [orchestrator] storage: what each exported task runs")
    run_task.add_argument("name")
    run_task.add_argument("--params-sha256", help="refuse to run unless the task is the one exported (its hash)")
    run_task.set_defaults(run=_run_task)
    backup = commands.add_parser("backup", help="write the project's state (registry and ledger, artifacts, products, "
                                 "prediction log, the deployed bento, settings and sources) to one tar.gz with a "
                                 "manifest of checksums")
    backup.add_argument("file", type=Path, help="the archive to write, e.g. backup.tar.gz")
    backup.set_defaults(run=_backup)
    restore = commands.add_parser("restore", help="rebuild a project from a backup in a new or empty folder, every "
                                  "member verified first (a corrupted archive is refused, naming the bad member)")
    restore.add_argument("file", type=Path)
    restore.add_argument("dest", type=Path)
    restore.set_defaults(run=_restore)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_args", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return args.run(args)
    except (SettingsError, RegistryError, LedgerError, OrchestratorError, EdgeError, StreamError, PrivacyError,
            BackupError) as e:
        print(f"mlops-nb: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
