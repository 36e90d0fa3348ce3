"""Reproduce-and-verify: rebuild a registered version from what its run recorded, in a clean workspace, and compare."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlops_nb.products import write_json
from mlops_nb.registry import version_card
from mlops_nb.settings import ENV_PREFIX, Settings, load_settings
from mlops_nb.tracking import BUILD_SETTINGS_TAG, KEY_PACKAGES, connect, provenance

__all__ = ["Reproduction", "ReproduceRefused", "reproduce", "refusals"]

COMPARED = ("data_sha256", "weights_sha256", "onnx_sha256", "test_accuracy")  # model card fields


class ReproduceRefused(RuntimeError):
    """What a rebuild would need is missing or differs; `reasons` says each thing, in words."""

    def __init__(self, reasons: list[str]):
        super().__init__("cannot reproduce: " + "; ".join(reasons))
        self.reasons = reasons


@dataclass
class Reproduction:
    """The comparison of a registered version with its rebuild: each compared figure, recorded and rebuilt."""

    model_name: str
    version: str
    commit: str
    checks: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def matched(self) -> bool:
        return bool(self.checks) and all(c["match"] for c in self.checks)


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _snapshot(settings: Settings, sha256: str) -> Path:
    return settings.products_dir / "snapshots" / f"{sha256}.parquet"


def refusals(tags: dict[str, str], settings: Settings) -> list[str]:
    """Why a run with these tags cannot be rebuilt here (empty: it can): dirty or unknown source, a missing commit,
    a missing snapshot or build settings, package versions that differ from the installed ones."""
    reasons = []
    commit = tags.get("mlops_nb.git_commit", "")
    dirty = tags.get("mlops_nb.git_dirty", "unknown")
    if len(commit) != 40:
        reasons.append(f"the run recorded no git commit ({commit or 'none'}): it was not trained from a checkout")
    elif _git(settings.root, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        reasons.append(f"commit {commit[:12]} is not in this repository: fetch it first")
    if dirty != "false":
        reasons.append(f"the tree had uncommitted changes when it was trained (git_dirty={dirty}): what trained the "
                       f"model is not all in commit {commit[:12]}")
    if BUILD_SETTINGS_TAG not in tags:
        reasons.append("the run recorded no build settings (it predates `mlops_nb.build_settings`)")
    data = tags.get("mlops_nb.data_sha256", "")
    if not data or not _snapshot(settings, data).is_file():
        reasons.append(f"the data snapshot {data[:12] or '(none recorded)'} is gone from "
                       f"{settings.products_dir / 'snapshots'}")
    now = provenance(settings.root)
    for key in ["mlops_nb.python", *(f"mlops_nb.version.{p}" for p in KEY_PACKAGES)]:
        if key in tags and tags[key] != now[key]:
            reasons.append(f"{key.rsplit('.', 1)[-1]} was {tags[key]} at training, {now[key]} here")
    return reasons


def _overrides(recorded: dict[str, dict], snapshot: Path, workspace: Path) -> dict[str, str]:
    """Environment variables that make the workspace's build use the recorded settings, the recorded snapshot and
    stores of its own."""
    env = {f"{ENV_PREFIX}{section}_{key}".upper(): ",".join(map(str, value)) if isinstance(value, list) else str(value)
           for section, values in recorded.items() for key, value in values.items()}
    return {**env, f"{ENV_PREFIX}DATA_SOURCE": str(snapshot),
            f"{ENV_PREFIX}TRACKING_URI": f"sqlite:///{workspace / 'mlruns.db'}",
            f"{ENV_PREFIX}TRACKING_ARTIFACT_ROOT": str(workspace / "mlartifacts"),
            f"{ENV_PREFIX}PATHS_PRODUCTS": str(workspace / "products"),
            f"{ENV_PREFIX}PATHS_SCRATCH": str(workspace / "scratch")}


def _checkout(settings: Settings, commit: str, workspace: Path) -> Path:
    """A clean checkout of `commit` in `workspace`; returns the project folder in it."""
    top = Path(_git(settings.root, "rev-parse", "--show-toplevel").stdout.strip())
    clone = workspace / "checkout"
    for args in (["clone", "--quiet", "--shared", "--no-checkout", str(top), str(clone)],
                 ["-C", str(clone), "checkout", "--quiet", "--detach", commit]):
        result = _git(workspace, *args)
        if result.returncode != 0:
            raise RuntimeError(f"git {' '.join(args[:2])} failed: {result.stderr.strip()}")
    return clone / settings.root.resolve().relative_to(top.resolve())


def reproduce(version: str, settings: Settings | None = None, *, keep: bool = False) -> Reproduction:
    """Rebuild `version` of the registered model from its run's commit, snapshot and build settings (a
    `ploomber build` up to the register task, in a temporary workspace with its own stores) and compare the data,
    weights and ONNX hashes, the test accuracy and every metric of the run. `ReproduceRefused` when something
    needed is missing or differs (see `refusals`). Writes products/evidence/reproduce-v<VERSION>.json."""
    import time

    settings = settings or load_settings()
    name = settings.registry.model_name
    card = version_card(name, version, settings)
    client = connect(settings)
    run = client.get_run(card.run_id)
    tags = run.data.tags
    if reasons := refusals(tags, settings):
        raise ReproduceRefused(reasons)
    result = Reproduction(name, str(version), tags["mlops_nb.git_commit"])
    if tags.get("mlops_nb.platform") != platform.platform():
        result.warnings.append(f"trained on {tags.get('mlops_nb.platform')}, rebuilt on {platform.platform()}")
    started = time.monotonic()
    workspace = Path(tempfile.mkdtemp(prefix="mlops-nb-reproduce-"))
    try:
        project = _checkout(settings, result.commit, workspace)
        snapshot = shutil.copy2(_snapshot(settings, card.data_sha256), workspace / "snapshot.parquet")
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update(_overrides(json.loads(tags[BUILD_SETTINGS_TAG]), Path(snapshot), workspace),
                   BENTOML_HOME=str(workspace / "bentoml"), PYTHONPATH=str(project))
        log = workspace / "build.log"
        with open(log, "w") as out:  # ploomber's progress bar goes to the terminal; its report to the log
            build = subprocess.run([str(Path(sys.executable).parent / "ploomber"), "build", "--partially",
                                    "register"], cwd=project, env=env, stdout=out, timeout=3600)
        if build.returncode != 0:
            raise RuntimeError(f"the rebuild of {name} v{version} failed (exit {build.returncode}); its report: "
                               f"{log}")
        rebuilt_settings = load_settings(project, environ=env)
        registered = json.loads((workspace / "products/register/registration.json").read_text())
        rebuilt = version_card(name, str(registered["version"]), rebuilt_settings)
        metrics = connect(rebuilt_settings).get_run(rebuilt.run_id).data.metrics
        result.checks = [{"what": key, "recorded": getattr(card, key), "rebuilt": getattr(rebuilt, key),
                          "match": getattr(card, key) == getattr(rebuilt, key)} for key in COMPARED]
        result.checks += [{"what": f"metric {key}", "recorded": value, "rebuilt": metrics.get(key),
                           "match": metrics.get(key) == value} for key, value in sorted(run.data.metrics.items())]
        keep = keep or not result.matched
    except BaseException:
        keep = True
        raise
    finally:
        result.seconds = round(time.monotonic() - started, 1)
        if keep:
            result.warnings.append(f"workspace kept: {workspace}")
        else:
            shutil.rmtree(workspace, ignore_errors=True)
    write_json(settings.products_dir / "evidence" / f"reproduce-v{version}.json",
               {**asdict(result), "matched": result.matched})
    return result
