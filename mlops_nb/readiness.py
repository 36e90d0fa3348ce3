"""`mlops-nb readiness`: the 16-item production-readiness checklist, each item computed for the current champion
from products/evidence/, the registry, the settings and the project's files: pass, fail, not applicable or not
checked, with its evidence and the command that fixes it."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from importlib.util import find_spec
from pathlib import Path

from mlops_nb.readiness_scans import alert_rules, bandit, pip_audit
from mlops_nb.settings import Settings

__all__ = ["Item", "Report", "Project", "CHECKLIST", "readiness", "EVIDENCE"]

PASS, FAIL, NA, UNCHECKED = "pass", "fail", "not applicable", "not checked"
# products/evidence/ files the checklist reads (their writers: benchmarks/peers.py, `mlops-nb monitor`, `mlops-nb
# backup`, `mlops-nb compare`, a fuzz run, CI's .ci/run)
EVIDENCE = {"serving": "serving-benchmark.json", "monitor": "monitor.json", "accuracy": "monitor-accuracy.json",
            "backup": "backup.json", "compare": "compare.json", "fuzz": "fuzz.json", "ci": "ci.json"}
BUILD = "ploomber build"


@dataclass(frozen=True)
class Item:
    """One checklist item's answer: status (pass, fail, not applicable, not checked), evidence lines, the fix."""

    status: str
    evidence: list[str]
    fix: str = ""
    number: int = 0
    group: str = ""
    title: str = ""
    required: bool = False


def _part(ok: bool | None, evidence: str, fix: str = "") -> Item:
    """A piece of an item: ok True = pass, False = fail, None = not checked."""
    return Item({True: PASS, False: FAIL, None: UNCHECKED}[ok], [evidence], "" if ok else fix)


def _na(evidence: str) -> Item:
    return Item(NA, [evidence])


def _combine(*parts: Item) -> Item:
    """An item from its parts: fail if one fails, else not checked if one is, else pass (all n/a: n/a)."""
    statuses = {p.status for p in parts}
    status = next((s for s in (FAIL, UNCHECKED, PASS) if s in statuses), NA)
    evidence = [f"{p.status.upper()}: {line}" if len(parts) > 1 else line for p in parts for line in p.evidence]
    fixes = dict.fromkeys(p.fix for p in parts if p.status in (FAIL, UNCHECKED) and p.fix)
    return Item(status, evidence, "; ".join(fixes))


def _age_days(seconds: float) -> float:
    return (time.time() - seconds) / 86400


class Project:
    """What the checks read, each piece read once: settings, evidence files, the registry, the tool scans."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def evidence(self, key: str) -> dict | None:
        """products/evidence/<file> as a dict; None when absent; ValueError naming the file when unreadable."""
        path = self.settings.products_dir / "evidence" / EVIDENCE[key]
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error})") from None

    def product(self, relative: str) -> dict | None:
        path = self.settings.products_dir / relative
        return json.loads(path.read_text()) if path.is_file() else None

    def file(self, relative: str) -> Path | None:
        path = self.settings.root / relative
        return path if path.is_file() else None

    def tests_matching(self, pattern: str) -> list[str]:
        """`tests/FILE::NAME` of the project's test functions whose name matches `pattern`."""
        return [f"tests/{f.name}::{name}" for f in sorted((self.settings.root / "tests").glob("test_*.py"))
                for name in re.findall(r"^def (test_\w+)", f.read_text(), re.M) if re.search(pattern, name)]

    @cached_property
    def registry(self) -> dict:
        """The champion's version and card, the ledger and its problems; {"error": why} when it cannot be read."""
        from mlops_nb.ledger import entries, verify
        from mlops_nb.registry import champion, champion_card

        store = self.settings.tracking_uri.removeprefix("sqlite:///")
        if store != self.settings.tracking_uri and not Path(store).exists():  # never create an empty one
            return {"error": f"no tracking store at {store}", "fix": BUILD}
        name = self.settings.registry.model_name
        try:
            version = champion(name, self.settings)
            return {"version": version and str(version.version), "card": champion_card(name, self.settings),
                    "ledger": entries(name, self.settings), "problems": verify(name, self.settings)}
        except Exception as error:  # an unreachable server, a broken store: the registry items are not checked
            return {"error": f"the registry could not be read: {type(error).__name__}: {str(error)[:200]}",
                    "fix": f"check [tracking] uri ({self.settings.tracking.uri})"}

    @cached_property
    def alerts(self):
        return alert_rules()


def _registry(project: Project) -> Item | None:
    """Not checked when the registry cannot be read; fail when there is no champion; else None."""
    reg = project.registry
    if "error" in reg:
        return _part(None, reg["error"], reg["fix"])
    if reg["version"] is None:
        return _part(False, f"{project.settings.registry.model_name} has no champion: no version passed the gates",
                     BUILD)
    return None


def performance(project: Project) -> Item:
    from mlops_nb.registry import gate

    stop = _registry(project)
    if stop:
        return stop
    card, gates = project.registry["card"], project.settings.gates
    checks = gate(card, None, gates).checks
    return _combine(*(_part(c["passed"], f"v{card.model_version} {c['detail']}", BUILD) for c in checks),
                    _part(bool(card.baselines), f"baselines on the held-out test split: "
                          f"{', '.join(card.baselines) or 'none on the card'}", BUILD))


def robustness(project: Project) -> Item:
    stop = _registry(project)
    if stop:
        return stop
    card, floor = project.registry["card"], project.settings.gates.min_robust_accuracy
    figures = ", ".join(f"{k} {v:.4f}" for k, v in card.robustness.items())
    measured = _part(bool(card.robustness) and (card.robust_accuracy >= floor),
                     f"test accuracy under perturbation: {figures or 'none on the card'}" +
                     (f" (floor {floor})" if floor else ""), BUILD)
    fuzz = project.evidence("fuzz")
    fix = ("fuzz the served API (schemathesis run URL/docs.json --checks all) and record products/evidence/"
           f"{EVIDENCE['fuzz']}")
    bad_input = _part(None, f"no fuzz evidence ({EVIDENCE['fuzz']})", fix) if fuzz is None else \
        _part(fuzz.get("server_errors") == 0, f"fuzz: {fuzz.get('requests')} requests, {fuzz.get('server_errors')} "
              "answered 5xx or not at all (bad input must get 4xx)", fix)
    return _combine(measured, bad_input)


def ab_testing(project: Project) -> Item:
    serving = project.settings.serving
    role = "canary" if serving.canary_fraction else "shadow" if serving.shadow_fraction else None
    if role is None:
        return _part(False, "no challenger traffic: [serving] canary_fraction and shadow_fraction are 0",
                     "set [serving] canary_fraction = 0.1 (or shadow_fraction), then `mlops-nb deploy`")
    fraction = serving.canary_fraction or serving.shadow_fraction
    compared, fix = project.evidence("compare"), "mlops-nb compare --labels FILE"
    if compared is None:
        verdict = _part(None, f"no comparison on labelled traffic ({EVIDENCE['compare']})", fix)
    else:  # a canary verdict (CanaryVerdict.to_dict) or a shadow comparison (labelled_rows at the top)
        rows = compared.get("labelled_rows") or (compared.get("canary") or {}).get("labelled_rows", 0)
        verdict = _part(bool(rows) and compared.get("verdict", "") is not None,
                        f"verdict {compared.get('verdict') or 'none'} on {rows} labelled rows" +
                        (f": {compared['reason']}" if compared.get("reason") else ""), fix)
    return _combine(_part(True, f"{role} on {fraction:g} of live requests"), verdict)


def fallback(project: Project) -> Item:
    serving = project.settings.serving
    configured = _part(serving.fallback == "previous_champion", f"[serving] fallback = {serving.fallback}" +
                       (f", a model call's budget {serving.fallback_budget_ms:g} ms" if serving.fallback_budget_ms
                        else ", no time budget (a hung call is not caught)"),
                       "set [serving] fallback = previous_champion, then `mlops-nb deploy`")
    tests = project.file("tests/test_fallback.py")
    tested = _part(True, "faults injected by tests/test_fallback.py") if tests else \
        _part(None, "no tests/test_fallback.py injecting faults", "")
    return _combine(configured, tested)


def scalable(project: Project) -> Item:
    bench, levels = project.evidence("serving"), (1, 32, 256)
    fix = "python benchmarks/peers.py --peers mlops-nb"
    if bench is None:
        measured = _part(None, f"no serving benchmark ({EVIDENCE['serving']})", fix)
    else:
        runs = {r["connections"]: r for r in bench.get("results", []) if r["peer"] == "mlops-nb" and r["rows"] == 1}
        missing = [c for c in levels if c not in runs]
        errors = sum(sum(r["non_2xx"].values()) + sum(r["socket_errors"].values()) for r in runs.values())
        requests = sum(r["requests"] for r in runs.values())
        figures = "; ".join(f"c={c} {r['rps']:,.0f} req/s p99 {r['p99_ms']:.1f} ms" for c, r in sorted(runs.items()))
        measured = _part(not missing and errors == 0 and requests > 0,
                         f"{bench.get('created', '?')}: {figures or 'no mlops-nb runs'}; {errors} non-2xx or socket "
                         f"errors in {requests:,} requests" + (f"; levels missing: {missing}" if missing else ""), fix)
    readme = project.file("README.md")
    documented = readme is not None and "back-pressure" in readme.read_text().lower()
    serving = project.settings.serving
    return _combine(measured, _part(documented, f"back-pressure: 503 + Retry-After past max_in_flight = "
                                    f"{serving.max_in_flight}" + (", documented in README.md" if documented else
                                                                  ", not documented in README.md"),
                                    "document back-pressure in README.md"))


def scaling(project: Project) -> Item:
    serving = project.settings.serving
    template = project.file("mlops_nb/serving/Dockerfile.j2") or Path(__file__).parent / "serving/Dockerfile.j2"
    health = "HEALTHCHECK" in template.read_text()
    return _combine(_part(True, f"[serving] workers = {serving.workers} per container"),
                    _part(health, f"the image's HEALTHCHECK on /readyz ({template.name})" if health else
                          f"{template.name} has no HEALTHCHECK", "add a HEALTHCHECK on /readyz to the Dockerfile"),
                    _na("replicas, load balancing and auto-scaling belong to the cluster (on paper here: scale on "
                        "mlops_nb request latency and in-flight requests, probe /readyz)"))


def monitoring(project: Project) -> Item:
    monitor = project.evidence("monitor")
    drift = _part(False, "the drift monitor never ran", "mlops-nb monitor") if monitor is None else \
        _part(True, f"drift monitor: {monitor['status']}, {_age_days(monitor['checked_at']):.1f} days ago")
    accuracy = project.evidence("accuracy")  # `mlops-nb monitor --labels`
    labelled = _part(None, "no labelled accuracy in the monitor's evidence", "mlops-nb monitor --labels FILE") \
        if not accuracy else _part(True, f"labelled accuracy: {accuracy.get('status', accuracy)}")
    rules = project.alerts
    return _combine(drift, labelled, Item({True: PASS, False: FAIL, None: UNCHECKED}[rules.ok], rules.evidence,
                                          rules.fix))


def disaster_recovery(project: Project) -> Item:
    backup, limit = project.evidence("backup"), project.settings.readiness.max_backup_age_days
    fix = "mlops-nb backup FILE"
    if backup is None:
        return _part(False, "no backup was ever made", fix)
    age = _age_days(backup["time"])
    return _combine(_part(age <= limit, f"last backup {backup['archive']} ({backup['members']} members, "
                          f"{backup['bytes']:,} bytes) {age:.1f} days old (max {limit:g})", fix),
                    _part(bool(backup.get("verified")), "restored and verified" if backup.get("verified") else
                          "not verified by a restore", fix))


def access_control(project: Project) -> Item:
    serving = project.settings.serving
    http = Path(__file__).parent / "serving/http.py"
    constant_time = "hmac.compare_digest" in http.read_text()
    return _combine(_part(bool(serving.api_key_env), f"API key read from ${serving.api_key_env}" if serving.api_key_env
                          else "no API key: [serving] api_key_env is empty",
                          "set [serving] api_key_env = SERVING_API_KEY, export the key there, `mlops-nb deploy`"),
                    _part(constant_time, "the key is compared in constant time (hmac.compare_digest)",
                          "compare keys with hmac.compare_digest"),
                    _part(True, f"size limits: {serving.max_body_bytes:,} bytes, {serving.max_rows_per_request} rows "
                          "per request; credentials only from environment variables (settings refuse them)"))


def privacy(project: Project) -> Item:
    m = project.settings.monitoring
    if not m.log_predictions:
        return _na("no prediction log is written ([monitoring] log_predictions = false)")
    redacted = sorted(set(m.drop_fields) | set(m.hash_fields))
    return _combine(_part(m.retention_days > 0, f"retention {m.retention_days:g} days" if m.retention_days else
                          "no retention: records are kept forever", "set [monitoring] retention_days (e.g. 30)"),
                    _part(bool(redacted), f"redacted fields: {', '.join(redacted)}" if redacted else
                          "no field is dropped or hashed", "set [monitoring] hash_fields = subject (and salt_env)"),
                    _part(m.max_bytes > 0, f"rotation past {m.max_bytes:,} bytes" if m.max_bytes else
                          "no size limit on the log", "set [monitoring] max_bytes"),
                    _part(True if find_spec("mlops_nb.log_admin") else None, "erasure: `mlops-nb log erase "
                          "--subject KEY` (mlops_nb.log_admin)", "an erase command for the prediction log"))


def audit(project: Project) -> Item:
    from mlops_nb.contracts import PredictionRecord

    reg = project.registry
    if "error" in reg:
        ledger = _part(None, reg["error"], reg["fix"])
    else:
        problems = reg["problems"]
        ledger = _part(bool(reg["ledger"]) and not problems, f"promotion ledger: {len(reg['ledger'])} entries, " +
                       ("every link holds" if not problems else "; ".join(problems[:3])),
                       "mlops-nb history --verify (restore the registry from a backup when a link breaks)")
    return _combine(ledger, _part("request_id" in PredictionRecord.model_fields,
                                  "every prediction-log record carries its request id"))


def vulnerabilities(project: Project) -> Item:
    parts = [pip_audit(project.settings.root / "requirements.lock.txt"),
             bandit(project.settings.root / "mlops_nb", project.settings.readiness.bandit_severity)]
    return _combine(*(Item({True: PASS, False: FAIL, None: UNCHECKED}[s.ok], s.evidence, s.fix) for s in parts))


def pipeline(project: Project) -> Item:
    registration, bento, ci = project.product("register/registration.json"), project.product("bento/bento.json"), \
        project.evidence("ci")
    built = _part(registration is not None, f"last build registered v{registration['version']} "
                  f"({'promoted' if registration['promoted'] else 'not promoted'}: {registration['reason']})"
                  if registration else "no build registered a version", BUILD)
    bento_built = _part(bool(bento and bento.get("bento_tag")), f"bento {bento['bento_tag']}" if bento and
                        bento.get("bento_tag") else "no bento built", BUILD)
    green = _part(None, f"no CI result ({EVIDENCE['ci']})", ".ci/run") if ci is None else \
        _part(ci.get("passed") is True, f"CI {'green' if ci.get('passed') else 'RED'} at {ci.get('time', '?')}",
              ".ci/run")
    return _combine(built, bento_built, green)


def rollback(project: Project) -> Item:
    from mlops_nb.serving.bento import last_deployed

    stop = _registry(project)
    if stop:
        return stop
    deployed = last_deployed(project.settings.products_dir)
    version, served = project.registry["version"], json.loads(deployed.read_text()) if deployed else None
    served_version = served and served.get("model_version")
    tests = project.tests_matching("rollback")
    previous = [e for e in project.registry["ledger"] if e.alias == "champion" and e.from_version]
    return _combine(_part(served_version == version, f"serving v{served_version}, the champion is v{version}"
                          if served_version else "nothing deployed", "mlops-nb deploy"),
                    _part(True if tests else None, f"rollback tested by {', '.join(tests)}" if tests else
                          "no test in tests/ rolls back", ""),
                    _part(True, f"previous champion v{previous[-1].from_version}: `mlops-nb rollback --reason ...`"
                          if previous else "no previous champion yet (the first one)"))


def runbooks(project: Project) -> Item:
    names, book = project.alerts.found, project.file("docs/runbook.md")
    if not names:
        return _part(None, "no alert names to cover (" + "; ".join(project.alerts.evidence) + ")",
                     project.alerts.fix)
    if book is None:
        return _part(False, "no docs/runbook.md", "write docs/runbook.md: one `## <alert>` section per alert")
    sections = {m.strip() for m in re.findall(r"^## (.+)$", book.read_text(), re.M)}
    missing = [n for n in names if n not in sections]
    tested = project.file("tests/test_runbook.py")
    return _combine(_part(not missing, f"{len(names) - len(missing)} of {len(names)} alerts have a runbook section" +
                          (f" (missing: {', '.join(missing)})" if missing else ""),
                          "add the missing sections to docs/runbook.md"),
                    _part(True if tested else None, "the runbook's commands are run by tests/test_runbook.py" if tested
                          else "no tests/test_runbook.py runs the runbook's commands", ""))


def on_call(project: Project) -> Item:
    r = project.settings.readiness
    if not (r.owner and r.escalation):
        return _part(None, f"owner {r.owner or '(empty)'}, escalation {r.escalation or '(empty)'}",
                     "set [readiness] owner and escalation")
    return _part(True, f"owner {r.owner}, escalation {r.escalation}")


MODEL, INFRA, SECURITY, OPS = "Model quality", "Infrastructure", "Security and compliance", "Operations"
CHECKLIST = [  # (group, title, check), numbered from 1 as in the checklist
    (MODEL, "Performance validated on production-like data", performance),
    (MODEL, "Robust to edge cases", robustness),
    (MODEL, "A/B testing in place", ab_testing),
    (MODEL, "Fallback when the model fails", fallback),
    (INFRA, "Scalable serving", scalable),
    (INFRA, "Load balancing and auto-scaling configured", scaling),
    (INFRA, "Monitoring and alerting", monitoring),
    (INFRA, "Disaster recovery", disaster_recovery),
    (SECURITY, "Access control and authentication", access_control),
    (SECURITY, "Data privacy", privacy),
    (SECURITY, "Audit logging and compliance checks", audit),
    (SECURITY, "Vulnerability assessment", vulnerabilities),
    (OPS, "Automated deployment pipeline", pipeline),
    (OPS, "Versioning and rollback", rollback),
    (OPS, "Documentation and runbooks", runbooks),
    (OPS, "On-call and escalation", on_call),
]


@dataclass
class Report:
    """Every item's answer for one champion; exit 1 when a required item fails."""

    model_name: str
    champion: str | None
    created: str
    items: list[Item] = field(default_factory=list)

    @property
    def failed_required(self) -> list[Item]:
        return [i for i in self.items if i.required and i.status == FAIL]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed_required else 0

    def counts(self) -> dict[str, int]:
        return {s: sum(i.status == s for i in self.items) for s in (PASS, FAIL, NA, UNCHECKED)}

    def to_dict(self) -> dict:
        return {**asdict(self), "counts": self.counts(), "failed_required": [i.number for i in self.failed_required]}


def readiness(settings: Settings) -> Report:
    """Evaluate every checklist item for the current champion."""
    project, required = Project(settings), set(settings.readiness.required)
    items = []
    for number, (group, title, check) in enumerate(CHECKLIST, start=1):
        try:
            item = check(project)
        except (ValueError, KeyError, TypeError, OSError) as error:  # evidence of an unexpected shape
            item = _part(None, f"its evidence could not be read: {type(error).__name__}: {error}", "")
        items.append(replace(item, number=number, group=group, title=title, required=number in required))
    registry = project.registry
    return Report(settings.registry.model_name, registry.get("version"), time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                                      time.gmtime()), items)
