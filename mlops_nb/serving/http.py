"""The project's HTTP front: an ASGI layer outside BentoML's app, doing only what a request needs."""

# Three protocols share one scoring path (`_score`): the project's `POST /predict`, MLflow's `POST /invocations`
# and the Open Inference Protocol's `POST /v2/models/{name}/infer`. Each is a codec (body -> rows, answer -> body,
# refusal -> error body); the checks (method, readiness, key, back-pressure, size), validation, routing (canary),
# the model call (inline, batched or under a time budget, answered by `Fallback` when it fails), the prediction
# log, the shadow and the metrics are the same for all. `POST /explain` passes the same checks and is scored in a
# worker thread. BentoML's own per-request middlewares (access log, tracing, its traffic metrics) are skipped on
# these routes; every other path (`/healthz`, `/readyz`, `/metrics`, `/schema.json`, ...) goes to BentoML's app.

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time

import orjson

from mlops_nb.serving.codecs import ORJSON, PredictCodec, Refused
from mlops_nb.serving.fallback import ModelFailed
from mlops_nb.serving.mlflow_protocol import MlflowCodec
from mlops_nb.serving.open_inference import MODEL_PATH, V2Codec, model_metadata
from mlops_nb.serving.scoring import InvalidInput

__all__ = ["Endpoint"]

logger = logging.getLogger("bentoml.mlops_nb.http")
JSON = [(b"content-type", b"application/json")]
STARTING = Refused(503, "starting", "the model is still loading; retry shortly", headers=[(b"retry-after", b"1")])


class Endpoint:
    """ASGI app: the project's routes, then BentoML's app (`app`) for everything else.

    `core` (the scoring core), `log` (prediction-log writer), `metrics`, `batcher`, `shadow`, `router` (the canary's)
    and `fallback` (runs model calls, answers failed ones) are attached by the BentoML service when its worker starts;
    until then the project's routes answer 503.
    """

    def __init__(self, app, settings, openapi: dict | None = None) -> None:
        self.app = app
        self.settings = settings
        self.core = None
        self.log = self.metrics = self.batcher = self.shadow = self.router = self.fallback = None
        self.scored = {}  # role -> the scored-requests counter of its version (labels bound once)
        self.api_key: bytes | None = None
        self.openapi = openapi
        self.in_flight = 0
        self.routes = {"/predict": (self.predict, PredictCodec), "/explain": (self.explain, PredictCodec),
                       "/model/metadata": (self.metadata, PredictCodec), "/docs.json": (self.docs, PredictCodec),
                       "/invocations": (self.invocations, MlflowCodec), "/ping": (self.ping, MlflowCodec),
                       "/health": (self.ping, MlflowCodec), "/version": (self.version, MlflowCodec),
                       "/v2": (self.v2_server, V2Codec), "/v2/health/live": (self.v2_live, V2Codec),
                       "/v2/health/ready": (self.v2_ready, V2Codec)}

    def _route(self, scope) -> tuple:
        """(handler, codec class, metrics label) of a request, or Nones for BentoML's app. The label of a v2 model
        path is its template: a client cannot grow the metric's label set."""
        if scope["type"] != "http":
            return None, None, None
        path = scope["path"]
        if route := self.routes.get(path):
            return *route, path
        if path.startswith("/v2/models/") and (match := MODEL_PATH.fullmatch(path)):
            return (lambda scope, receive, request_id: self.v2_model(match, scope, receive, request_id), V2Codec,
                    f"/v2/models/{{name}}{match[3] or ''}")
        return None, None, None

    async def __call__(self, scope, receive, send) -> None:
        handler, codec, label = self._route(scope)
        if handler is None:
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        request_id = secrets.token_hex(8)
        try:
            status, body, headers = await handler(scope, receive, request_id)
        except Refused as refused:
            status, body, headers = refused.status, codec.error(refused, request_id), refused.headers
        except Exception:  # a fault of ours, not of the request: say so with the id, log the traceback
            logger.exception("request %s to %s failed", request_id, scope["path"])
            status, headers = 500, []
            body = codec.error(Refused(500, "internal", f"the server failed on this request; quote request id "
                                                        f"{request_id} when reporting it"), request_id)
        typed = headers and any(name == b"content-type" for name, _ in headers)
        await send({"type": "http.response.start", "status": status,
                    "headers": [*([] if typed else JSON), (b"content-length", str(len(body)).encode()),
                                (b"x-request-id", request_id.encode()), *headers]})
        await send({"type": "http.response.body", "body": body})
        if self.metrics:
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)

    @staticmethod
    def _method(scope, method: str) -> None:
        if scope["method"] != method:
            raise Refused(405, "method_not_allowed", f"use {method}", headers=[(b"allow", method.encode())])

    def _check(self, scope, method: str, *, key: bool = True) -> None:
        """Refuse a request that cannot be served: wrong method, model not loaded, missing or wrong key (`key`)."""
        self._method(scope, method)
        if self.core is None:
            raise STARTING
        if key and self.api_key is not None:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.api_key):
                raise Refused(401, "unauthorized", "missing or wrong API key: send `Authorization: Bearer <key>`",
                              headers=[(b"www-authenticate", b"Bearer")])

    async def _body(self, scope, receive, headers: dict) -> bytes:
        """The request body; `Refused` 413 when it is larger than [serving] max_body_bytes (read no further)."""
        limit = self.settings.max_body_bytes
        too_large = Refused(413, "too_large", f"the body is larger than {limit} bytes ([serving] max_body_bytes)")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_large
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def predict(self, scope, receive, request_id: str) -> tuple:
        self._check(scope, "POST")
        return await self._admitted(scope, receive, request_id, self._score, PredictCodec)

    async def explain(self, scope, receive, request_id: str) -> tuple:
        self._check(scope, "POST")
        return await self._admitted(scope, receive, request_id, self._explain, PredictCodec)

    async def invocations(self, scope, receive, request_id: str) -> tuple:
        self._check(scope, "POST")
        return await self._admitted(scope, receive, request_id, self._score, MlflowCodec)

    async def _admitted(self, scope, receive, request_id: str, handler, codec) -> tuple:
        """Run a scoring route's `handler` with its codec once back-pressure admits the request."""
        if self.in_flight >= self.settings.max_in_flight:
            if self.metrics:
                self.metrics.rejected.inc()
            raise Refused(503, "overloaded", f"more than {self.settings.max_in_flight} requests in flight "
                                             "([serving] max_in_flight); retry shortly",
                          headers=[(b"retry-after", b"1")])
        self.in_flight += 1
        try:
            return await handler(scope, receive, request_id, codec(self.core))
        finally:
            self.in_flight -= 1

    async def _validated(self, scope, receive, codec) -> tuple:
        """(headers, rows, features) of a valid request: size, the codec's media type and format, the contract."""
        headers = dict(scope["headers"])
        body = await self._body(scope, receive, headers)
        try:
            rows = codec.parse(body, headers)
            return headers, rows, self.core.validate(rows.values, numbers_only=rows.numbers_only, field=rows.field)
        except InvalidInput as invalid:
            raise Refused.invalid(invalid) from None

    async def _score(self, scope, receive, request_id: str, codec) -> tuple:
        started = time.perf_counter()
        headers, rows, features = await self._validated(scope, receive, codec)
        subject = headers.get(b"x-subject") if self.log or self.router else None
        core, role = self.router.route(subject) if self.router else (self.core, "champion")
        batcher = self.batcher if core is self.core else None  # the batcher batches the champion's calls
        fallback, subject = self.fallback, subject.decode("latin-1") if subject else None
        if self.metrics:
            self.scored[role].inc()
        try:  # inline (the fast path) unless a time budget or the batcher takes the call off the event loop
            probabilities = (await fallback.call(core, features, batcher) if batcher or fallback.budget_ms
                             else fallback.score(core, features))
        except ModelFailed as failure:  # the previous champion answers, or Refused 503 says why none did
            core, probabilities, note = fallback.rescue(failure, core, rows.values, features, request_id, started,
                                                        subject)
            body, extra = codec.encode(core, probabilities, request_id, note, rows.request)
            said = f"{note['reason']}; failed-version={note['failed_version']}; answered-by={note['answered_by']}"
            return 200, body, [*extra, (b"x-fallback", said.encode())]
        if self.log:
            self.log.put(core.record(rows.values, probabilities, request_id, started, role=role, subject=subject))
        if self.shadow:
            self.shadow.offer(features, request_id)
        if self.metrics:
            self.metrics.rows.inc(len(features))
        return 200, *codec.encode(core, probabilities, request_id, None, rows.request)

    async def _explain(self, scope, receive, request_id: str, codec) -> tuple:
        _, _, features = await self._validated(scope, receive, codec)
        if not self.core.card.feature_mean:
            raise Refused(501, "not_available", f"version {self.core.card.model_version}'s model card has no training "
                                                "means (registered before /explain existed): register it again")
        explained = await asyncio.to_thread(self.core.explain, features, request_id)  # off the loop: 65x the work
        return 200, orjson.dumps(explained, option=ORJSON), []

    async def metadata(self, scope, receive, request_id: str) -> tuple:
        self._check(scope, "GET")
        body = {**self.core.card.model_dump(mode="json"), "n_features": self.core.card.n_features,
                "provider": self.core.provider, "batching": self.settings.batching,
                "shadow": {"model_version": self.shadow.core.card.model_version, "fraction": self.shadow.fraction}
                if self.shadow else None, "canary": self.router.describe() if self.router else None,
                "fallback": self.fallback.describe(self.settings.fallback)}
        return 200, orjson.dumps(body), []

    async def docs(self, scope, receive, request_id: str) -> tuple:
        self._method(scope, "GET")
        return 200, orjson.dumps(self.openapi), []

    async def ping(self, scope, receive, request_id: str) -> tuple:
        """MLflow's `/ping` and `/health`: 200 once the model is loaded (no key: probes call it)."""
        self._check(scope, "GET", key=False)
        return 200, b"\n", [(b"content-type", b"text/plain")]

    async def version(self, scope, receive, request_id: str) -> tuple:
        """MLflow's `/version`, as text: here the served model's name and version (MLflow's gives its own)."""
        self._check(scope, "GET", key=False)
        card = self.core.card
        return 200, f"{card.model_name}/{card.model_version}".encode(), [(b"content-type", b"text/plain")]

    async def v2_server(self, scope, receive, request_id: str) -> tuple:
        self._check(scope, "GET", key=False)
        return 200, orjson.dumps({"name": self.settings.service_name, "version": str(self.core.card.model_version),
                                  "extensions": ["binary_tensor_data"]}), []

    async def v2_live(self, scope, receive, request_id: str) -> tuple:
        self._method(scope, "GET")
        return 200, b'{"live":true}', []

    async def v2_ready(self, scope, receive, request_id: str) -> tuple:
        self._check(scope, "GET", key=False)
        return 200, b'{"ready":true}', []

    async def v2_model(self, match, scope, receive, request_id: str) -> tuple:
        """`/v2/models/{name}[/versions/{version}]` (metadata), `.../ready` and `.../infer` of the served model."""
        name, version, action = match.groups()
        self._check(scope, "POST" if action == "/infer" else "GET")
        card = self.core.card
        if name != card.model_name or version not in (None, str(card.model_version)):
            raise Refused(404, "not_found", f"model {name!r}{f' version {version}' if version else ''} is not served "
                                            f"here: {card.model_name!r} version {card.model_version} is")
        if action == "/infer":
            return await self._admitted(scope, receive, request_id, self._score, V2Codec)
        if action == "/ready":
            return 200, orjson.dumps({"name": name, "ready": True}), []
        return 200, orjson.dumps(model_metadata(self.core)), []
