"""The readiness checks that run a tool: pip-audit over the lock file, bandit over the package, promtool over the
exported alert rules. A tool that is missing or cannot reach its data gives "not checked", never a pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

__all__ = ["Scan", "tool", "pip_audit", "bandit", "alert_rules"]

SEVERITIES = ("low", "medium", "high")
SCAN_TIMEOUT_S = 600


@dataclass
class Scan:
    """A tool's answer: `ok` True (clean), False (findings), None (not checked), with evidence lines and the fix."""

    ok: bool | None
    evidence: list[str]
    fix: str = ""
    found: list[str] = field(default_factory=list)


def tool(name: str) -> str | None:
    """The executable `name` on PATH or beside this Python (a venv's bin/, which README's commands never activate)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else None)


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=SCAN_TIMEOUT_S, env=os.environ)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def pip_audit(lock: Path) -> Scan:
    """Known vulnerabilities of the pinned packages in `lock` (PyPI's advisory data, over the network)."""
    fix = f"pip-audit -r {lock.name} --no-deps --disable-pip"
    exe = tool("pip-audit")
    if exe is None:
        return Scan(None, ["pip-audit is not installed"], 'pip install -e ".[cpu,dev]" -c requirements.lock.txt')
    if not lock.is_file():
        return Scan(None, [f"no lock file at {lock}"], "")
    done = _run([exe, "-r", str(lock), "--no-deps", "--disable-pip", "--progress-spinner", "off", "-f", "json"],
                lock.parent)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        return Scan(None, [f"pip-audit could not read its advisory data (exit {done.returncode}): "
                           f"{_last_line(done.stderr or done.stdout)}"], fix)
    packages = report.get("dependencies", [])
    found = [f"{p['name']} {p['version']}: {v['id']}" + (f" (fixed in {', '.join(v['fix_versions'])})"
                                                        if v.get("fix_versions") else "")
             for p in packages for v in p.get("vulns", [])]
    skipped = [p for p in packages if p.get("skip_reason")]
    evidence = [f"pip-audit over {lock.name}: {len(packages)} pinned packages, {len(found)} known "
                f"vulnerabilit{'y' if len(found) == 1 else 'ies'}" +
                (f", {len(skipped)} NOT audited (first: {skipped[0]['skip_reason']})" if skipped else "")] + found[:20]
    if skipped and not found:  # pip-audit still says "No known vulnerabilities found"
        return Scan(None, evidence, f"let pip-audit reach PyPI's JSON API (pypi.org), then `{fix}`")
    return Scan(not found, evidence, f"raise the pins in pyproject.toml and {lock.name}, then `{fix}`", found)


def bandit(package: Path, severity: str) -> Scan:
    """bandit's static scan of `package`: findings at `severity` or above fail."""
    fix = f"bandit -r {package.name} --severity-level {severity}"
    exe = tool("bandit")
    if exe is None:
        return Scan(None, ["bandit is not installed"], 'pip install -e ".[cpu,dev]" -c requirements.lock.txt')
    if not package.is_dir():
        return Scan(None, [f"no package folder {package}"], "")
    done = _run([exe, "-r", str(package), "-f", "json", "-q"], package.parent)
    try:
        results = json.loads(done.stdout)["results"]
    except (json.JSONDecodeError, KeyError):
        return Scan(None, [f"bandit gave no report (exit {done.returncode}): {_last_line(done.stderr)}"], fix)
    floor = SEVERITIES.index(severity)
    found = [f"{r['test_id']} {r['issue_severity'].lower()} {Path(r['filename']).relative_to(package.parent)}:"
             f"{r['line_number']} {r['issue_text']}" for r in results
             if SEVERITIES.index(r["issue_severity"].lower()) >= floor]
    evidence = [f"bandit over {package.name}/: {len(results)} finding(s), {len(found)} at {severity} severity or "
                "above"] + found[:20]
    return Scan(not found, evidence, f"fix each finding, or mark a reviewed line `# nosec <id>` with why; `{fix}`",
                found)


def _export_alerts(outdir: Path) -> tuple[int, str]:
    """`mlops-nb export alerts OUTDIR`, in this process: its exit code (2: no such command) and what it printed."""
    from mlops_nb.cli import main

    printed = StringIO()
    with redirect_stdout(printed), redirect_stderr(printed):
        try:
            code = main(["export", "alerts", str(outdir)])
        except SystemExit as stop:  # argparse: not a known engine
            code = stop.code if isinstance(stop.code, int) else 2
    return code, printed.getvalue()


def alert_rules() -> Scan:
    """Export the Prometheus alert rules and validate them with `promtool check rules`; `found`: the alert names."""
    import yaml

    from mlops_nb.alerts import RULES_FILE

    with tempfile.TemporaryDirectory(prefix="mlops-nb-readiness-") as tmp:
        code, printed = _export_alerts(Path(tmp))
        if code:
            return Scan(None, [f"`mlops-nb export alerts` failed (exit {code}): {_last_line(printed)}"],
                        "mlops-nb export alerts OUTDIR")
        files = [Path(tmp) / RULES_FILE]  # the rules; the scrape config beside them is no rule file
        names = [rule["alert"] for f in files for group in (yaml.safe_load(f.read_text()) or {}).get("groups", [])
                 for rule in group.get("rules", []) if "alert" in rule]
        if not names:
            return Scan(False, ["`mlops-nb export alerts` wrote no alerting rule"], "mlops-nb export alerts OUTDIR")
        listed = f"{len(names)} alert rules ({', '.join(names)})"
        promtool = tool("promtool")
        if promtool is None:
            return Scan(None, [f"{listed}; promtool is not installed to validate them"],
                        "apt-get install -y prometheus", names)
        done = _run([promtool, "check", "rules", *map(str, files)], Path(tmp))
    if done.returncode:
        return Scan(False, [f"{listed}; promtool check rules: {_last_line(done.stdout + done.stderr)}"],
                    f"mlops-nb export alerts OUTDIR && promtool check rules OUTDIR/{RULES_FILE}", names)
    return Scan(True, [f"{listed}; promtool check rules: SUCCESS"], "", names)
