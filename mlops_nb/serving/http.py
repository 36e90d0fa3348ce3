"""The project's HTTP front: an ASGI layer outside BentoML's app, doing only what a request needs."""

# `POST /predict` is parsed with orjson, validated as a whole array, scored inline by ONNX Runtime (microseconds
# for a small model) or through the in-process batcher, answered, and handed to the prediction log's queue. A call
# that fails (or runs past [serving] fallback_budget_ms, in a worker thread) is answered by `Fallback`.
# `POST /explain` passes the same checks and is scored in a worker thread (one ONNX row per row and feature).
# BentoML's own per-request middlewares (access log, tracing, its traffic metrics) are skipped on these routes;
# every other path (`/healthz`, `/readyz`, `/metrics`, `/schema.json`, ...) goes to BentoML's app unchanged.

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time

import orjson

from mlops_nb.serving.fallback import ModelFailed
from mlops_nb.serving.scoring import InvalidInput, RowError, ScoringCore

__all__ = ["Endpoint"]

logger = logging.getLogger("bentoml.mlops_nb.http")
JSON = [(b"content-type", b"application/json")]
NOT_NUMBERS = (b'"', b"true", b"false", b"null")  # anything in a rows array that numpy would convert silently
ORJSON = orjson.OPT_SERIALIZE_NUMPY


def _error(status: int, code: str, message: str, errors: list[RowError] = (), request_id: str = "") -> tuple:
    body = {"error": code, "message": message, "request_id": request_id,
            "errors": [{"field": e.field, "reason": e.reason, "row": e.row} for e in errors]}
    return status, orjson.dumps(body)


def _wrong_method(method: str) -> tuple:
    return 405, orjson.dumps({"error": "method_not_allowed", "message": f"use {method}"}), [(b"allow",
                                                                                            method.encode())]


def _subject(scope) -> str | None:
    """The request's `X-Subject` header (the key of whatever it is about), logged as `subject`."""
    subject = dict(scope["headers"]).get(b"x-subject")
    return subject.decode("latin-1") if subject else None


def _numbers_only(body: bytes) -> bool:
    """True when the body's rows (all after the first `[`) hold only numbers: no strings, booleans or nulls."""
    start = body.find(b"[")
    return start >= 0 and all(body.find(token, start) < 0 for token in NOT_NUMBERS)


class Endpoint:
    """ASGI app: the project's routes, then BentoML's app (`app`) for everything else.

    `core` (the scoring core), `log` (prediction-log writer), `metrics`, `batcher`, `shadow` and `fallback` (runs
    model calls, answers failed ones) are attached by the BentoML service when its worker starts; until then the
    project's routes answer 503.
    """

    def __init__(self, app, settings, openapi: dict | None = None) -> None:
        self.app = app
        self.settings = settings
        self.core: ScoringCore | None = None
        self.log = self.metrics = self.batcher = self.shadow = self.fallback = None
        self.api_key: bytes | None = None
        self.openapi = openapi
        self.in_flight = 0
        self.routes = {"/predict": self.predict, "/explain": self.explain, "/model/metadata": self.metadata,
                       "/docs.json": self.docs}

    async def __call__(self, scope, receive, send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        request_id = secrets.token_hex(8)
        try:
            status, body, headers = await route(scope, receive, request_id)
        except Exception:  # a fault of ours, not of the request: say so in JSON with the id, log the traceback
            logger.exception("request %s to %s failed", request_id, scope["path"])
            status, body = _error(500, "internal", f"the server failed on this request; quote request id "
                                                   f"{request_id} when reporting it", request_id=request_id)
            headers = []
        await send({"type": "http.response.start", "status": status,
                    "headers": [*JSON, (b"content-length", str(len(body)).encode()),
                                (b"x-request-id", request_id.encode()), *headers]})
        await send({"type": "http.response.body", "body": body})
        if self.metrics:
            self.metrics.requests.labels(scope["path"], str(status)).inc()
            self.metrics.latency.labels(scope["path"]).observe(time.perf_counter() - started)

    def _refuse(self, scope, method: str) -> tuple | None:
        """The answer for a request that cannot be served (method, readiness, key), or None."""
        if scope["method"] != method:
            return _wrong_method(method)
        if self.core is None:
            return (*_error(503, "starting", "the model is still loading; retry shortly"), [(b"retry-after", b"1")])
        if self.api_key is not None:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.api_key):
                return (*_error(401, "unauthorized", "missing or wrong API key: send `Authorization: Bearer "
                                                     "<key>`"), [(b"www-authenticate", b"Bearer")])
        return None

    async def _body(self, scope, receive) -> bytes | None:
        """The request body, or None when it is larger than [serving] max_body_bytes (read no further)."""
        limit = self.settings.max_body_bytes
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def predict(self, scope, receive, request_id: str) -> tuple:
        return await self._admitted(scope, receive, request_id, self._predict)

    async def explain(self, scope, receive, request_id: str) -> tuple:
        return await self._admitted(scope, receive, request_id, self._explain)

    async def _admitted(self, scope, receive, request_id: str, handler) -> tuple:
        """Run a scoring route's `handler` past the checks every one shares: method, readiness, key, back-pressure."""
        if refused := self._refuse(scope, "POST"):
            return refused
        if self.in_flight >= self.settings.max_in_flight:
            if self.metrics:
                self.metrics.rejected.inc()
            return (*_error(503, "overloaded", f"more than {self.settings.max_in_flight} requests in flight "
                                               "([serving] max_in_flight); retry shortly", request_id=request_id),
                    [(b"retry-after", b"1")])
        self.in_flight += 1
        try:
            answer = await handler(scope, receive, request_id)
            return answer if len(answer) == 3 else (*answer, [])
        finally:
            self.in_flight -= 1

    async def _validated(self, scope, receive, request_id: str) -> tuple:
        """(rows, features) of a valid request body, or (None, error answer): media type, size, JSON, contract."""
        content_type = dict(scope["headers"]).get(b"content-type", b"application/json")
        if not content_type.startswith(b"application/json"):
            return None, _error(415, "unsupported_media_type", "send the body as application/json",
                                request_id=request_id)
        body = await self._body(scope, receive)
        if body is None:
            return None, _error(413, "too_large", f"the body is larger than {self.settings.max_body_bytes} bytes "
                                                  "([serving] max_body_bytes)", request_id=request_id)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            return None, _error(400, "invalid_json", f"the body is not valid JSON: {error}", request_id=request_id)
        try:
            rows = self._rows(payload)
            return rows, self.core.validate(rows, numbers_only=_numbers_only(body))
        except InvalidInput as invalid:
            return None, _error(400, "invalid_input", str(invalid), invalid.errors, request_id)

    async def _predict(self, scope, receive, request_id: str) -> tuple:
        started = time.perf_counter()
        rows, features = await self._validated(scope, receive, request_id)
        if rows is None:
            return features
        core, fallback = self.core, self.fallback
        try:  # inline (the fast path) unless a time budget or the batcher takes the call off the event loop
            probabilities = (await fallback.call(core, features, self.batcher) if self.batcher or fallback.budget_ms
                             else fallback.score(core, features))
        except ModelFailed as failure:
            return fallback.answer(failure, core, rows, features, request_id, started, _subject(scope))
        if self.log:
            self.log.put(core.record(rows, probabilities, request_id, started, subject=_subject(scope)))
        if self.shadow:
            self.shadow.offer(features, request_id)
        if self.metrics:
            self.metrics.rows.inc(len(rows))
        return 200, orjson.dumps(core.answer(probabilities, request_id), option=ORJSON)

    async def _explain(self, scope, receive, request_id: str) -> tuple:
        rows, features = await self._validated(scope, receive, request_id)
        if rows is None:
            return features
        if not self.core.card.feature_mean:
            return _error(501, "not_available", f"version {self.core.card.model_version}'s model card has no training "
                                                "means (registered before /explain existed): register it again",
                          request_id=request_id)
        explained = await asyncio.to_thread(self.core.explain, features, request_id)  # off the loop: 65x the work
        return 200, orjson.dumps(explained, option=ORJSON)

    @staticmethod
    def _rows(payload) -> list:
        if not isinstance(payload, dict):
            raise InvalidInput([RowError("(body)", 'must be a JSON object {"instances": [[...], ...]}')])
        if unknown := sorted(set(payload) - {"instances"}):
            raise InvalidInput([RowError(name, "unknown field; the body holds only `instances`") for name in unknown])
        if "instances" not in payload:
            raise InvalidInput([RowError("instances", "required: rows of raw feature values")])
        return payload["instances"]

    async def metadata(self, scope, receive, request_id: str) -> tuple:
        if refused := self._refuse(scope, "GET"):
            return refused
        body = {**self.core.card.model_dump(mode="json"), "n_features": self.core.card.n_features,
                "provider": self.core.provider, "batching": self.settings.batching,
                "shadow": {"model_version": self.shadow.core.card.model_version, "fraction": self.shadow.fraction}
                if self.shadow else None, "fallback": self.fallback.describe(self.settings.fallback)}
        return 200, orjson.dumps(body), []

    async def docs(self, scope, receive, request_id: str) -> tuple:
        if scope["method"] != "GET":
            return _wrong_method("GET")
        return 200, orjson.dumps(self.openapi), []
