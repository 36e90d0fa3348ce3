"""Thin adapter around the MLflow model registry: register the ONNX model, apply quality gates, move aliases."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mlops_nb.settings import Settings
from mlops_nb.tracking import connect, resume_run

__all__ = ["GateResult", "evaluate_gates", "register_onnx", "champion", "apply_gates", "download_version",
           "CHAMPION", "CHALLENGER"]

CHAMPION, CHALLENGER = "champion", "challenger"
ACCURACY_TAG = "mlops_nb.test_accuracy"


@dataclass
class GateResult:
    """Outcome of the quality gates for one model version: each check with its figures, and the verdict."""

    passed: bool
    checks: list[dict] = field(default_factory=list)

    @property
    def reason(self) -> str:
        failed = [c["detail"] for c in self.checks if not c["passed"]]
        return "all gates passed" if self.passed else "; ".join(failed)


def evaluate_gates(accuracy: float, champion_accuracy: float | None, *, min_accuracy: float,
                   max_regression: float) -> GateResult:
    """Check `accuracy` against the floor and against the current champion (if any)."""
    checks = [{"gate": "min_accuracy", "passed": accuracy >= min_accuracy, "value": accuracy,
               "threshold": min_accuracy,
               "detail": f"test accuracy {accuracy:.4f} {'>=' if accuracy >= min_accuracy else '<'} "
                         f"min_accuracy {min_accuracy}"}]
    if champion_accuracy is not None:
        floor = champion_accuracy - max_regression
        checks.append({"gate": "max_regression", "passed": accuracy >= floor, "value": accuracy,
                       "threshold": floor,
                       "detail": f"test accuracy {accuracy:.4f} {'>=' if accuracy >= floor else '<'} champion "
                                 f"{champion_accuracy:.4f} - max_regression {max_regression}"})
    return GateResult(passed=all(c["passed"] for c in checks), checks=checks)


def champion(model_name: str, settings: Settings | None = None):
    """The registry's current champion version, or None."""
    from mlflow.exceptions import MlflowException

    client = connect(settings)
    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None


def register_onnx(*, run_id: str, onnx_path: Path | str, input_example: np.ndarray, model_name: str,
                  extra: dict[str, dict], tags: dict[str, str], settings: Settings | None = None):
    """Log the ONNX file (signature, input example, extra JSON files) in the run and register it; returns the version."""
    import mlflow
    import onnx
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

    from mlops_nb.onnx_export import onnx_predict, ort_session, providers_for

    example = np.asarray(input_example, dtype=np.float32)
    signature = infer_signature(example, onnx_predict(ort_session(onnx_path), example))
    with tempfile.TemporaryDirectory() as tmp, resume_run(run_id, settings):
        files = []
        for name, content in extra.items():
            (Path(tmp) / name).write_text(json.dumps(content))
            files.append(str(Path(tmp) / name))
        info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="model", signature=signature,
                                     input_example=example, save_as_external_data=False, extra_files=files,
                                     tags=tags, onnx_execution_providers=providers_for("auto"))
    # registered through the client, which (unlike `registered_model_name=`) prints no notices to stderr
    client = connect(settings)
    try:
        client.create_registered_model(model_name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(model_name, source=info.model_uri, run_id=run_id, tags=tags,
                                       model_id=info.model_id)


def apply_gates(model_name: str, version: str, accuracy: float, *, min_accuracy: float, max_regression: float,
                settings: Settings | None = None) -> GateResult:
    """Give `version` the challenger alias, and champion too when the gates pass; record why on the version."""
    client = connect(settings)
    current = champion(model_name, settings)
    current_accuracy = float(current.tags[ACCURACY_TAG]) if current and ACCURACY_TAG in current.tags else None
    result = evaluate_gates(accuracy, current_accuracy, min_accuracy=min_accuracy, max_regression=max_regression)
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    for key, value in {"mlops_nb.gates": json.dumps(asdict(result)), "mlops_nb.gates_passed": str(result.passed),
                       "mlops_nb.gates_reason": result.reason,
                       "mlops_nb.champion_before": str(current.version) if current else "none"}.items():
        client.set_model_version_tag(model_name, version, key, value)
    if result.passed:
        client.set_registered_model_alias(model_name, CHAMPION, version)
    return result


def download_version(model_name: str, alias_or_version: str, dest: Path | str,
                     settings: Settings | None = None) -> Path:
    """Download a registered version's model folder (MLmodel, model.onnx, extra files) into `dest`."""
    import mlflow

    connect(settings)
    ref = f"@{alias_or_version}" if not alias_or_version.isdigit() else f"/{alias_or_version}"
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    return Path(mlflow.artifacts.download_artifacts(f"models:/{model_name}{ref}", dst_path=str(dest)))
