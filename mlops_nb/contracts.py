"""What passes between stages, defined once: the model card, the prediction-log record, metric names."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ModelCard", "PredictionRecord", "PREDICTION_LOG_SCHEMA", "METRICS"]

PREDICTION_LOG_SCHEMA = 1


class ModelCard(BaseModel):
    """A registered model version as serving, batch scoring and monitoring need it (stored with the bento model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str
    model_version: str | None = Field(None, description="the registry version; None until registered")
    run_id: str
    variant: str = Field(description="fp32 or int8: the exported variant that passed its gates")
    input_contract: Literal["raw"] = Field(
        "raw", description="raw: rows of raw feature values, preprocessing inside the ONNX graph")
    features: list[str]
    feature_min: float
    feature_max: float
    data_sha256: str
    onnx_sha256: str
    weights_sha256: str
    test_accuracy: float

    @property
    def n_features(self) -> int:
        return len(self.features)


class PredictionRecord(BaseModel):
    """One line of the prediction log (JSON lines): one answered request."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = PREDICTION_LOG_SCHEMA
    request_id: str
    time: float = Field(description="Unix time the request was answered")
    model_name: str
    model_version: str
    role: Literal["champion", "challenger", "canary", "shadow", "fallback"] = "champion"
    subject: str | None = Field(None, description="optional key of whatever the request is about")
    inputs: list[list[float]]
    labels: list[int]
    confidence: list[float]
    latency_ms: float


# Prometheus metric names the project owns (alert rules and tests use these, never BentoML's)
METRICS = {
    "requests": "mlops_nb_requests_total",
    "latency": "mlops_nb_request_seconds",
    "rows": "mlops_nb_rows_total",
    "model": "mlops_nb_model_info",
    "log_dropped": "mlops_nb_prediction_log_dropped_total",
    "rejected": "mlops_nb_overload_rejected_total",
}
