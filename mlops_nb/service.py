"""BentoML service: validated HTTP API in front of an adaptively batched ONNX Runtime model (CUDA or CPU)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel, Field

from mlops_nb.settings import load_settings

logger = logging.getLogger("bentoml.mlops_nb")


def _project_root() -> Path | None:
    here = Path(__file__).resolve().parents[1]
    return here if (here / "settings.ini").is_file() else None


SETTINGS = load_settings(_project_root())
SERVING = SETTINGS.serving
MODEL = bentoml.models.BentoModel(f"{SETTINGS.registry.model_name}:latest")
RESOURCES = {"gpu": SERVING.gpus} if SERVING.gpus else {"cpu": "1"}

info_app = FastAPI(title="model metadata")


class Prediction(BaseModel):
    label: int = Field(description="predicted class")
    probabilities: list[float] = Field(description="probability of each class, in class order")


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model_name: str
    model_version: str


Value = Annotated[float, Field(allow_inf_nan=False, ge=SETTINGS.data.feature_min, le=SETTINGS.data.feature_max)]
Rows = Annotated[list[list[Value]], Field(min_length=1, max_length=SERVING.max_rows_per_request,
                                          description="rows of raw feature values, one list per instance")]


def check_width(instances: list[list[float]], n_features: int) -> np.ndarray:
    """Rows as a float32 array; `InvalidArgument` (HTTP 400) naming the first row of the wrong width."""
    from bentoml.exceptions import InvalidArgument

    for i, row in enumerate(instances):
        if len(row) != n_features:
            raise InvalidArgument(f"instances[{i}] has {len(row)} values; expected {n_features}")
    return np.asarray(instances, dtype=np.float32)


@bentoml.service(name=f"{SERVING.service_name}_model", resources=RESOURCES, workers=SERVING.workers,
                 traffic={"timeout": SERVING.timeout_s})
class OnnxModel:
    """ONNX Runtime on CUDA when present (and allowed by [serving] device), CPU otherwise; batched adaptively."""

    model = MODEL

    def __init__(self) -> None:
        from mlops_nb.onnx_export import ort_session

        self.session = ort_session(self.model.path_of("model.onnx"), SERVING.device)
        self.provider = self.session.get_providers()[0]
        logger.info("ONNX Runtime session on %s for %s", self.provider, self.model.tag)

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=SERVING.max_batch_size,
                 max_latency_ms=SERVING.max_latency_ms)
    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        from mlops_nb.onnx_export import onnx_predict

        return onnx_predict(self.session, features)

    @bentoml.api
    def active_provider(self) -> str:
        return self.provider


@bentoml.service(name=SERVING.service_name, workers=SERVING.workers, traffic={"timeout": SERVING.timeout_s})
@bentoml.asgi_app(info_app, path="/model")
class DigitsService:
    """Public API: validates rows, applies the exported preprocessing, returns classes and probabilities."""

    onnx = bentoml.depends(OnnxModel)
    model = MODEL

    def __init__(self) -> None:
        from mlops_nb.research.model import Standardizer

        info = json.loads(Path(self.model.path_of("preprocessing.json")).read_text())
        self.standardizer = Standardizer.from_dict(info)
        self.meta = dict(self.model.info.metadata)
        self.model_name, self.model_version = str(self.meta.get("model_name")), str(self.meta.get("model_version"))
        self.log = None
        if SETTINGS.monitoring.log_predictions:
            from mlops_nb.monitoring import PredictionLog

            self.log = PredictionLog(SETTINGS.path(SETTINGS.monitoring.prediction_log))
            logger.info("logging predictions to %s", self.log.path)
        logger.info("serving %s version %s (data %s)", self.model_name, self.model_version,
                    self.meta.get("data_sha256"))

    @bentoml.api
    async def predict(self, instances: Rows) -> PredictResponse:
        """Classify each row of raw feature values."""
        start = time.perf_counter()
        rows = check_width(instances, self.standardizer.n_features)
        probabilities = await self._call_model("predict_proba", self.standardizer.transform(rows))
        labels = probabilities.argmax(axis=1).tolist()
        if self.log:
            self.log.write(model_version=self.model_version, instances=instances, labels=labels,
                           confidence=probabilities.max(axis=1).round(6).tolist(),
                           latency_ms=(time.perf_counter() - start) * 1000)
        return PredictResponse(
            predictions=[Prediction(label=label, probabilities=p.tolist()) for label, p in zip(labels, probabilities)],
            model_name=self.model_name, model_version=self.model_version)

    async def _call_model(self, method: str, *args, attempts: int = 3):
        """Call the model service, retrying a dropped pooled connection (BentoML#4238); 503 if it keeps failing."""
        import aiohttp
        from bentoml.exceptions import ServiceUnavailable

        for attempt in range(1, attempts + 1):
            try:
                return await getattr(self.onnx.to_async, method)(*args)
            except aiohttp.ClientConnectionError as error:
                logger.warning("model service connection failed (attempt %d of %d): %r", attempt, attempts, error)
                if attempt == attempts:
                    raise ServiceUnavailable("the model service is unreachable; retry shortly") from error

    @info_app.get("/metadata")
    async def metadata(self) -> dict:
        """Model name/version, data snapshot hash, and the ONNX Runtime provider actually in use."""
        return {**self.meta, "provider": await self._call_model("active_provider"),
                "n_features": self.standardizer.n_features, "bento_model": str(self.model.tag)}
