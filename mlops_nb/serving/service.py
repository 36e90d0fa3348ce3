"""The BentoML service that `bentoml serve` starts, from the project folder or from the built bento."""

# One process validates, scores with ONNX Runtime in-process and answers (`Endpoint`, in front of BentoML's app);
# the model is the one the bento step imported from the registry, with its model card.

from __future__ import annotations

import logging
import os
from pathlib import Path

import bentoml

from mlops_nb.contracts import CANARY_FOLDER, CARD_FILE, FALLBACK_FOLDER, SHADOW_FOLDER, ModelCard
from mlops_nb.settings import load_settings

logger = logging.getLogger("bentoml.mlops_nb")


def _project_root() -> Path | None:
    """The built bento's own folder when this module runs from one; else None: the project found from the working
    folder or $MLOPS_NB_ROOT (`bentoml serve` in a project, the bento task of a build)."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "settings.ini").is_file() and (here.parent / "bento.yaml").is_file() else None


SETTINGS = load_settings(_project_root())
SERVING = SETTINGS.serving
MODEL = bentoml.models.BentoModel(f"{SETTINGS.registry.model_name}:latest")
RESOURCES = {"gpu": SERVING.gpus} if SERVING.gpus else {"cpu": "1"}
ENDPOINTS = []  # this process's Endpoint (BentoML makes the app before the service instance)


class ProjectService(bentoml.Service):
    """A BentoML service whose app has the project's `Endpoint` in front (the fast path for its routes)."""

    def to_asgi(self, is_main: bool = True):
        from mlops_nb.serving.http import Endpoint

        ENDPOINTS.append(Endpoint(super().to_asgi(is_main), SERVING))
        return ENDPOINTS[-1]


@bentoml.service(name=SERVING.service_name, workers=SERVING.workers, resources=RESOURCES,
                 traffic={"timeout": SERVING.timeout_s}, service_class=ProjectService)
class ModelService:
    """Classifies rows of raw feature values with the registry's champion (ONNX Runtime, CUDA or CPU)."""

    model = MODEL

    def __init__(self) -> None:
        from mlops_nb.serving.openapi import openapi_document

        self.core = self._core(Path(self.model.path))
        self.challenger = self._challenger("shadow", SHADOW_FOLDER, SERVING.shadow_fraction)
        self.canary = self._challenger("canary", CANARY_FOLDER, SERVING.canary_fraction)
        self.previous = self._previous_champion()
        self.log = self.shadow = self.router = None
        card = self.core.card
        logger.info("serving %s version %s on %s (batching %s)", card.model_name, card.model_version,
                    self.core.provider, SERVING.batching)
        for endpoint in ENDPOINTS:
            self._attach(endpoint, openapi_document)

    @staticmethod
    def _core(folder: Path):
        from mlops_nb.serving.scoring import ScoringCore

        card = ModelCard.model_validate_json((folder / CARD_FILE).read_text())
        return ScoringCore(folder, card, device=SERVING.device, max_rows=SERVING.max_rows_per_request)

    def _bundled(self, name: str):
        """The core of the version bundled in the model's sub-folder `name`, or None when there is none."""
        folder = Path(self.model.path) / name
        return self._core(folder) if (folder / CARD_FILE).is_file() else None

    def _challenger(self, role: str, folder_name: str, fraction: float):
        """The core of the challenger bundled in `folder_name` when its `[serving] <role>_fraction` is above 0,
        else None."""
        if not fraction:
            return None
        if (core := self._bundled(folder_name)) is None:
            logger.warning("[serving] %s_fraction = %s, but this bento holds no challenger (`mlops-nb deploy` "
                           "bundles one when the registry's challenger is another version than the served one): "
                           "serving without a %s", role, fraction, role)
            return None
        logger.info("%s challenger: version %s gets %.0f%% of requests (%s)", role, core.card.model_version,
                    fraction * 100, "scored off the request path" if role == "shadow" else "it answers them")
        return core

    def _previous_champion(self):
        """The bundled previous champion's core when `[serving] fallback = previous_champion`, else None."""
        if SERVING.fallback != "previous_champion":
            return None
        if (core := self._bundled(FALLBACK_FOLDER)) is None:
            logger.warning("[serving] fallback = previous_champion, but this bento holds no previous champion "
                           "(`mlops-nb deploy` bundles it when the ledger has one): a failed model call is answered "
                           "503, as with fallback = error")
            return None
        logger.info("fallback: version %s answers when version %s fails (budget %g ms)", core.card.model_version,
                    self.core.card.model_version, SERVING.fallback_budget_ms)
        return core

    def _attach(self, endpoint, openapi_document) -> None:
        """Give the HTTP front this worker's scoring core, log writer, metrics, batcher and API key."""
        from mlops_nb.serving.batching import Batcher
        from mlops_nb.serving.fallback import Fallback
        from mlops_nb.serving.metrics import ServingMetrics
        from mlops_nb.serving.prediction_log import PredictionLogWriter

        metrics = ServingMetrics()
        card = self.core.card
        metrics.model.labels(card.model_name, str(card.model_version), card.variant, self.core.provider).set(1)
        if SETTINGS.monitoring.log_predictions:
            self.log = PredictionLogWriter.from_settings(SETTINGS, on_drop=metrics.log_dropped.inc)
            logger.info("logging predictions to %s", self.log.path)
        if self.challenger and self.log:
            from mlops_nb.serving.shadow import Shadow

            self.shadow = Shadow(self.challenger, self.log, SERVING.shadow_fraction,
                                 on_outcome=lambda outcome: metrics.shadow.labels(outcome).inc())
        if self.canary:
            from mlops_nb.serving.canary import Router, stop_file

            self.router = Router(self.core, self.canary, SERVING.canary_fraction, stop_file(SETTINGS),
                                 on_rollback=metrics.canary_rollbacks.inc)
        if SERVING.api_key_env:
            key = os.environ.get(SERVING.api_key_env)
            if not key:
                raise RuntimeError(f"[serving] api_key_env = {SERVING.api_key_env}, but that environment variable "
                                   "is empty: set it to the API key, or clear the setting to serve without one")
            endpoint.api_key = key.encode()
        if SERVING.batching == "adaptive":
            endpoint.batcher = Batcher(self.core.score, max_batch_size=SERVING.max_batch_size,
                                       max_latency_ms=SERVING.max_latency_ms)
        endpoint.fallback = Fallback(self.previous, budget_ms=SERVING.fallback_budget_ms, log=self.log,
                                     on_outcome=lambda reason, outcome: metrics.fallback.labels(reason, outcome).inc())
        endpoint.openapi = openapi_document(self.core, max_rows=SERVING.max_rows_per_request,
                                            api_key=endpoint.api_key is not None, title=SERVING.service_name)
        endpoint.log, endpoint.metrics, endpoint.core, endpoint.shadow = self.log, metrics, self.core, self.shadow
        endpoint.router = self.router
        endpoint.scored = {role: metrics.scored.labels(core.card.model_version, role)
                           for role, core in (("champion", self.core), ("canary", self.canary)) if core}

    @bentoml.api
    def predict(self, instances: list[list[float]]) -> dict:
        """Classify rows of raw feature values (served over HTTP by the project's front, `Endpoint`)."""
        import secrets

        return self.core.answer(self.core.score(self.core.validate(instances)), secrets.token_hex(8))

    @bentoml.on_shutdown
    def close(self) -> None:
        """Flush the prediction log before the worker exits (uvicorn drained in-flight requests first)."""
        if self.shadow:
            self.shadow.close()
        if self.log:
            self.log.close()
