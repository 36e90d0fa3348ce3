"""What passes between stages, defined once: the model card, the prediction-log record, metric names."""

from __future__ import annotations

import json
from typing import Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ModelCard", "PredictionRecord", "PREDICTION_LOG_SCHEMA", "METRICS", "TAG_PREFIX", "CARD_FILE",
           "PROFILE_FILE", "SHADOW_FOLDER", "CANARY_FOLDER", "FALLBACK_FOLDER",
           "CANARY_STOP_FILE"]

PREDICTION_LOG_SCHEMA = 1
TAG_PREFIX = "mlops_nb."  # every tag the project writes on runs and registered versions
CARD_FILE = "model_card.json"  # the card beside the ONNX file: in a registered version's files and a bento model
PROFILE_FILE = "reference_profile.json"  # drift's reference, registered with each version and bundled
SHADOW_FOLDER = "shadow"  # the bento model's sub-folder holding the shadow challenger (its ONNX file and card)
CANARY_FOLDER = "canary"  # ... the canary challenger, answering canary_fraction of live requests
FALLBACK_FOLDER = "fallback"  # ... the previous champion, answering when the routed version fails
CANARY_STOP_FILE = "canary-stop.json"  # beside the prediction log: {"model_version": V, ...} stops routing to canary V


class ModelCard(BaseModel):
    """A registered model version as serving, batch scoring and monitoring need it.

    Stored with the registered version (as `model_card.json` and as its registry tags, `to_tags`/`from_tags`) and
    with the bento model. `feature_min`/`feature_max` are the range the training split spans (its profile).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str
    model_version: str | None = Field(None, description="the registry version; None until registered")
    run_id: str
    variant: str = Field(description="fp32 or the compression candidate ([export] candidates) that serves")
    variant_reason: str = Field("", description="why this variant serves, in words")
    input_contract: Literal["raw"] = Field(
        "raw", description="raw: rows of raw feature values, preprocessing inside the ONNX graph")
    features: list[str]
    classes: list[int] | list[str] = Field(description="class labels, in the order of the model's outputs")
    feature_min: float
    feature_max: float
    data_sha256: str
    onnx_sha256: str
    weights_sha256: str
    test_accuracy: float = Field(description="the served variant's accuracy on the test split: what gates compare")
    parity_max_abs_diff: float = Field(description="max |onnx - torch| over the test split's probabilities")
    test_metrics: dict[str, float] = Field(default_factory=dict, description="the served variant's metrics on the "
                                           "test split (accuracy, balanced_accuracy, macro_f1, log_loss, roc_auc)")
    baselines: dict[str, dict[str, float]] = Field(default_factory=dict, description="each baseline's metrics on the "
                                                   "test split, fitted on the training split")
    feature_mean: list[float] = Field(default_factory=list, description="each feature's mean on the training split: "
                                      "the baseline of /explain's occlusion")
    feature_importance: dict[str, float] = Field(default_factory=dict, description="test accuracy lost when a feature "
                                                 "is shuffled (permutation importance, seeded), largest first")
    robustness: dict[str, float] = Field(default_factory=dict, description="test accuracy of the trained model "
                                         "under noise, a missing feature and FGSM (research.evaluate.robustness)")

    @property
    def robust_accuracy(self) -> float | None:
        """The lowest accuracy under perturbation (None when the card has none)."""
        return min(self.robustness.values()) if self.robustness else None

    def score(self, metric: str) -> float | None:
        """The served variant's test figure on `metric` (None when the card has none: an older card, or roc_auc for
        more than two classes)."""
        return self.test_metrics.get(metric, self.test_accuracy if metric == "accuracy" else None)

    def baseline_scores(self, metric: str) -> dict[str, float]:
        return {name: figures[metric] for name, figures in self.baselines.items() if metric in figures}

    @property
    def n_features(self) -> int:
        return len(self.features)

    def to_tags(self) -> dict[str, str]:
        """The card as registry tags (`mlops_nb.<field>`): strings as they are, other values as JSON."""
        return {TAG_PREFIX + key: value if isinstance(value, str) else json.dumps(value)
                for key, value in self.model_dump(mode="json", exclude={"model_version"}).items()}

    @classmethod
    def from_tags(cls, tags: dict[str, str], version: str | None = None) -> "ModelCard":
        """Read a card back from a registered version's tags; raises `ValueError` naming what is missing."""
        fields = {name: f for name, f in cls.model_fields.items() if name != "model_version"}
        missing = sorted(TAG_PREFIX + name for name, f in fields.items() if f.is_required() and
                         TAG_PREFIX + name not in tags)
        if missing:
            raise ValueError(f"no model card in the registry tags (missing {', '.join(missing)})")
        text = {name for name, f in fields.items() if f.annotation is str or get_origin(f.annotation) is Literal}
        values = {name: tags[TAG_PREFIX + name] if name in text else json.loads(tags[TAG_PREFIX + name])
                  for name in fields if TAG_PREFIX + name in tags}
        return cls.model_validate({**values, "model_version": version})


class PredictionRecord(BaseModel):
    """One line of the prediction log (JSON lines): one answered request."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = PREDICTION_LOG_SCHEMA
    request_id: str
    time: float = Field(description="Unix time the request was answered")
    model_name: str
    model_version: str
    role: Literal["champion", "challenger", "canary", "shadow", "fallback"] = "champion"
    subject: str | None = Field(None, description="optional key of whatever the request is about (X-Subject); a "
                                                  "salted SHA-256 hex when [monitoring] hash_fields has subject")
    inputs: list[list[float]] | str | None = Field(description="the request's rows; empty in a shadow record (the "
                                                                "champion record with the same request_id holds "
                                                                "them); null when [monitoring] drop_fields has inputs, "
                                                                "a salted SHA-256 hex when hash_fields has it")
    labels: list[int] | list[str]
    confidence: list[float]
    latency_ms: float
    fallback_reason: Literal["error", "nonfinite", "timeout"] | None = Field(
        None, description="set when the routed version failed: role is then `fallback` and model_version is the "
                          "version that answered (the previous champion), or the failed one when none could answer")
    failed_version: str | None = Field(None, description="the routed version that failed, when fallback_reason is set")


# Prometheus metric names the project owns (alert rules and tests use these, never BentoML's)
METRICS = {
    "requests": "mlops_nb_requests_total",
    "latency": "mlops_nb_request_seconds",
    "rows": "mlops_nb_rows_total",
    "model": "mlops_nb_model_info",
    "log_dropped": "mlops_nb_prediction_log_dropped_total",
    "rejected": "mlops_nb_overload_rejected_total",
    "shadow": "mlops_nb_shadow_requests_total",
    "scored": "mlops_nb_scored_requests_total",  # by model_version and role (champion, canary)
    "fallback": "mlops_nb_fallback_total",  # by reason (error, nonfinite, timeout) and outcome (answered, refused)
    "canary_rollbacks": "mlops_nb_canary_rollbacks_total",  # the served process stopped routing to its canary
    # written by `mlops-nb monitor` (products/monitor/drift.prom, for node_exporter's textfile collector)
    "drift": "mlops_nb_drift",
    "drift_checked": "mlops_nb_drift_checked_timestamp_seconds",
}
