"""Thin adapter around the MLflow model registry: register the ONNX model, apply quality gates, move aliases."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mlops_nb.contracts import CARD_FILE, PROFILE_FILE, TAG_PREFIX, ModelCard
from mlops_nb.ledger import Entry, append, entries
from mlops_nb.settings import GatesSettings, Settings, load_settings
from mlops_nb.tracking import connect, resume_run

__all__ = ["GateResult", "RegistryError", "evaluate_gates", "gate", "gate_score", "register_onnx", "champion",
           "champion_card", "version_card", "apply_gates", "promote", "rollback", "previous_champion",
           "download_version", "fetch_version", "CHAMPION", "CHALLENGER", "CARD_FILE", "EXTRA_FILES",
           "REFERENCE_PROFILE"]

CHAMPION, CHALLENGER = "champion", "challenger"
EXTRA_FILES = "extra_files"  # where MLflow puts a logged model's extra files, in a fetched version's folder
REFERENCE_PROFILE = f"{EXTRA_FILES}/{PROFILE_FILE}"


@dataclass
class GateResult:
    """Outcome of the quality gates for one model version: each check with its figures, and the verdict."""

    passed: bool
    checks: list[dict] = field(default_factory=list)

    @property
    def reason(self) -> str:
        if not self.passed:
            return "; ".join(c["detail"] for c in self.checks if not c["passed"])
        lift = [c["detail"] for c in self.checks if c["gate"] == "min_lift"]
        return "all gates passed" + "".join(f": {detail}" for detail in lift)


def evaluate_gates(score: float, champion_score: float | None, baselines: dict[str, float] | None = None,
                   robust_accuracy: float | None = None, *, metric: str = "accuracy", min_score: float,
                   max_regression: float, min_lift: float = 0.0, min_robust_accuracy: float = 0.0) -> GateResult:
    """Check the served variant's test `score` on `metric` against the floor, the current champion (if any) and
    the best baseline fitted on the same split (if any); and, when `min_robust_accuracy` is set, the lowest
    accuracy under perturbation."""
    def check(gate: str, threshold: float, detail: str) -> dict:
        passed = score >= threshold
        return {"gate": gate, "passed": passed, "value": score, "threshold": threshold,
                "detail": f"test {metric} {score:.4f} {'>=' if passed else '<'} {detail}"}

    checks = [check("min_score", min_score, f"min_score {min_score}")]
    if champion_score is not None:
        checks.append(check("max_regression", champion_score - max_regression,
                            f"champion {champion_score:.4f} - max_regression {max_regression}"))
    if baselines:
        best = max(baselines, key=baselines.get)
        checks.append(check("min_lift", min(baselines[best] + min_lift, 1.0),  # a perfect baseline: match it
                            f"baseline {best} {baselines[best]:.4f} + min_lift {min_lift} (lift "
                            f"{score - baselines[best]:+.4f})"))
    if min_robust_accuracy:
        passed = robust_accuracy is not None and robust_accuracy >= min_robust_accuracy
        figure = "none on the card" if robust_accuracy is None else f"{robust_accuracy:.4f}"
        checks.append({"gate": "min_robust_accuracy", "passed": passed, "value": robust_accuracy,
                       "threshold": min_robust_accuracy, "detail": f"robust accuracy {figure} "
                       f"{'>=' if passed else '<'} min_robust_accuracy {min_robust_accuracy}"})
    return GateResult(passed=all(c["passed"] for c in checks), checks=checks)


def gate_score(card: ModelCard, metric: str) -> float:
    """`card`'s test figure on `metric`; `RegistryError` when it has none (the register step checks before it
    registers anything)."""
    score = card.score(metric)
    if score is None:
        raise RegistryError(f"[gates] metric = {metric}: version {card.model_version}'s card has no such test "
                            "figure (roc_auc needs two classes; older cards hold accuracy only)")
    return score


def gate(card: ModelCard, current: ModelCard | None, gates: GatesSettings) -> GateResult:
    """The one gates function (promote and the register step use it): `card`'s [gates] metric against the floor,
    the current champion's figure on the same metric, and the best baseline on the card. A champion without that
    figure is a failed check, never a skipped one."""
    champion_score = current.score(gates.metric) if current else None
    result = evaluate_gates(gate_score(card, gates.metric), champion_score, card.baseline_scores(gates.metric) or None,
                            card.robust_accuracy, **gates)
    if current and champion_score is None:
        result.checks.append({"gate": "max_regression", "passed": False, "value": None, "threshold": None,
                              "detail": f"champion version {current.model_version}'s card has no test {gates.metric} "
                                        "to compare with (registered before [gates] metric): promote with --force "
                                        "once you have compared them"})
        result.passed = False
    return result


class RegistryError(RuntimeError):
    """The registry holds something the gates cannot read (say, a champion without a model card)."""


def champion(model_name: str, settings: Settings | None = None):
    """The registry's current champion version, or None when the model or its champion alias does not exist yet.

    Any other registry error (an unreachable server, a broken store) is raised, never read as "no champion".
    """
    from mlflow.exceptions import MlflowException

    client = connect(settings)
    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST" or (
                error.error_code == "INVALID_PARAMETER_VALUE" and f"alias {CHAMPION} not found" in error.message):
            return None
        raise


def champion_card(model_name: str, settings: Settings | None = None) -> ModelCard | None:
    """The champion's model card, read from its registry tags; None without a champion."""
    version = champion(model_name, settings)
    if version is None:
        return None
    try:
        return ModelCard.from_tags(version.tags, str(version.version))
    except ValueError as error:
        raise RegistryError(f"{model_name} version {version.version} is the champion, but {error}: the regression "
                            "gate cannot compare with it. Re-register it with a build of this project, or move the "
                            f"{CHAMPION!r} alias to a version that has one.") from None


def register_onnx(*, card: ModelCard, onnx_path: Path | str, input_example: np.ndarray, extra: dict[str, dict],
                  settings: Settings | None = None):
    """Log the ONNX file (signature, input example, model card, extra JSON files) in the card's run and register
    it under the card's model name, with the card as tags; returns the version."""
    import mlflow
    import onnx
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

    from mlops_nb.onnx_export import onnx_predict, ort_session, providers_for

    example = np.asarray(input_example, dtype=np.float32)
    signature = infer_signature(example, onnx_predict(ort_session(onnx_path), example))
    tags = card.to_tags()
    with tempfile.TemporaryDirectory() as tmp, resume_run(card.run_id, settings):
        files = []
        for name, content in {CARD_FILE: card.model_dump(mode="json"), **extra}.items():
            (Path(tmp) / name).write_text(json.dumps(content))
            files.append(str(Path(tmp) / name))
        info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="model", signature=signature,
                                     input_example=example, save_as_external_data=False, extra_files=files,
                                     tags=tags, onnx_execution_providers=providers_for("auto"))
    # registered through the client, which (unlike `registered_model_name=`) prints no notices to stderr
    client = connect(settings)
    try:
        client.create_registered_model(card.model_name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(card.model_name, source=info.model_uri, run_id=card.run_id, tags=tags,
                                       model_id=info.model_id)


def apply_gates(card: ModelCard, version: str, gates: GatesSettings, settings: Settings | None = None) -> GateResult:
    """Give `version` the challenger alias, and champion too when the gates pass; record why on the version and
    each alias move in the ledger."""
    client = connect(settings)
    current = champion_card(card.model_name, settings)
    result = gate(card, current, gates)
    append(card.model_name, alias=CHALLENGER, to_version=str(version), reason="registered by a build",
           settings=settings)
    for key, value in {"gates": json.dumps(asdict(result)), "gates_passed": str(result.passed),
                       "gates_reason": result.reason,
                       "champion_before": current.model_version if current else "none"}.items():
        client.set_model_version_tag(card.model_name, version, TAG_PREFIX + key, value)
    if result.passed:
        append(card.model_name, alias=CHAMPION, to_version=str(version), reason=f"build: {result.reason}",
               gates=asdict(result), settings=settings)
    return result


def version_card(model_name: str, version: str, settings: Settings | None = None) -> ModelCard:
    """A registered version's model card (from its tags); `RegistryError` when the version or its card is missing."""
    from mlflow.exceptions import MlflowException

    try:
        tags = connect(settings).get_model_version(model_name, str(version)).tags
    except MlflowException:
        raise RegistryError(f"{model_name} has no version {version}: `mlops-nb history` lists the versions the "
                            "ledger knows") from None
    try:
        return ModelCard.from_tags(tags, str(version))
    except ValueError as error:
        raise RegistryError(f"{model_name} version {version}: {error}") from None


def promote(model_name: str, version: str, *, reason: str, force: bool = False,
            settings: Settings | None = None) -> tuple[GateResult, Entry | None]:
    """Make `version` the champion if it passes the gates against the current champion (or anyway, with `force`):
    the move is a ledger entry with the gate figures and the reason. Returns the gates and the entry (None: refused)."""
    settings = settings or load_settings()
    if not reason.strip():
        raise RegistryError("a promotion needs a reason (--reason)")
    card, current = version_card(model_name, version, settings), champion_card(model_name, settings)
    if current and current.model_version == str(version):
        raise RegistryError(f"{model_name} version {version} is already the champion")
    result = gate(card, current, settings.gates)
    if not (result.passed or force):
        return result, None
    entry = append(model_name, alias=CHAMPION, to_version=str(version), reason=reason, gates=asdict(result),
                   forced=not result.passed, settings=settings)
    return result, entry


def previous_champion(model_name: str, settings: Settings | None = None) -> str | None:
    """The previous champion: the version the ledger's last champion move replaced (None: there is none)."""
    moves = [e for e in entries(model_name, settings) if e.alias == CHAMPION]
    return moves[-1].from_version if moves else None


def rollback(model_name: str, *, reason: str, settings: Settings | None = None) -> Entry:
    """Make the previous champion the champion again."""
    previous = previous_champion(model_name, settings)
    if previous is None:
        raise RegistryError(f"{model_name} has no previous champion to roll back to (`mlops-nb history` shows the "
                            "ledger)")
    return append(model_name, alias=CHAMPION, to_version=previous, reason=f"rollback: {reason}", settings=settings)


def download_version(model_name: str, alias_or_version: str, dest: Path | str,
                     settings: Settings | None = None) -> Path:
    """Download a registered version's model folder (MLmodel, model.onnx, extra files) into `dest`."""
    import mlflow

    connect(settings)
    ref = f"@{alias_or_version}" if not alias_or_version.isdigit() else f"/{alias_or_version}"
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    return Path(mlflow.artifacts.download_artifacts(f"models:/{model_name}{ref}", dst_path=str(dest)))


def fetch_version(model_name: str, version: str, dest: Path | str,
                  settings: Settings | None = None) -> tuple[Path, ModelCard]:
    """Download a registered version (a number, or `champion`) into `dest` with its model card (from its extra
    files, `model_version` set), checking the ONNX file against the card's SHA-256: what serving and batch scoring
    load. `RegistryError` when there is no such version, no champion yet, or the file differs."""
    from mlflow.exceptions import MlflowException

    from mlops_nb.products import file_sha256

    if version == CHAMPION:
        found = champion(model_name, settings)
        if found is None:
            raise RegistryError(f"registered model {model_name!r} has no {CHAMPION!r} alias yet: no version passed "
                                "the gates")
        version = str(found.version)
    elif not str(version).isdigit():
        raise RegistryError(f"{version!r} is not a version: give a version number or {CHAMPION!r}")
    try:
        folder = download_version(model_name, str(version), dest, settings)
    except MlflowException:
        raise RegistryError(f"{model_name} has no version {version}: `mlops-nb history` lists the versions the "
                            "ledger knows") from None
    card = ModelCard.model_validate({**json.loads((folder / EXTRA_FILES / CARD_FILE).read_text()),
                                     "model_version": str(version)})
    if file_sha256(folder / "model.onnx") != card.onnx_sha256:
        raise RegistryError(f"{model_name} v{version}: registry file differs from the parity-checked ONNX file")
    return folder, card
