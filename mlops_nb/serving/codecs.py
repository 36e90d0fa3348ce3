"""What each protocol's route shares with the others: a refusal with its status, and the `/predict` codec (the
project's own protocol). A codec turns a request body into rows and an answer into a body; scoring is elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import orjson

from mlops_nb.serving.scoring import InvalidInput, RowError

__all__ = ["Refused", "Rows", "numbers_only", "PredictCodec"]

NOT_NUMBERS = (b'"', b"true", b"false", b"null")  # anything in a rows array that numpy would convert silently
ORJSON = orjson.OPT_SERIALIZE_NUMPY


@dataclass
class Refused(Exception):
    """A request the service will not score: its HTTP status, a machine-readable code and what to do. `errors`:
    per-row reasons; `details`: extra fields of the error body (a failed model call's reason and version)."""

    status: int
    code: str
    message: str
    errors: list[RowError] | tuple = ()
    headers: list = field(default_factory=list)
    details: dict = field(default_factory=dict)

    @classmethod
    def invalid(cls, invalid: InvalidInput) -> Refused:
        return cls(400, "invalid_input", str(invalid), invalid.errors)

    def fields(self, request_id: str) -> dict:
        """The project's error body: code, message, request id, details and per-row reasons."""
        return {"error": self.code, "message": self.message, "request_id": request_id, **self.details,
                "errors": [{"field": e.field, "reason": e.reason, "row": e.row} for e in self.errors]}


class Rows(NamedTuple):
    """A request's rows as the codec found them: `values` (a list of rows, or an array), `numbers_only` (the body
    holds no strings, booleans or nulls), `field` (how errors name them, e.g. `instances`)."""

    values: list | np.ndarray
    numbers_only: bool
    field: str = "instances"
    request: dict | None = None  # what the codec's answer needs from the request (a v2 request's outputs)


def numbers_only(body: bytes) -> bool:
    """True when the body's rows (all after the first `[`) hold only numbers: no strings, booleans or nulls."""
    start = body.find(b"[")
    return start >= 0 and all(body.find(token, start) < 0 for token in NOT_NUMBERS)


def json_payload(body: bytes):
    """The parsed JSON body; `Refused` 400 `invalid_json` naming the error."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise Refused(400, "invalid_json", f"the body is not valid JSON: {error}") from None


class PredictCodec:
    """`POST /predict` and `/explain`: `{"instances": [[...], ...]}` in, a label and probabilities per row out."""

    media = b"application/json"

    def __init__(self, core=None) -> None:
        """Made per request like the other codecs, from the served core; this one needs nothing of it."""

    def parse(self, body: bytes, headers: dict) -> Rows:
        if not headers.get(b"content-type", self.media).startswith(self.media):
            raise Refused(415, "unsupported_media_type", "send the body as application/json")
        return Rows(self.rows(json_payload(body)), numbers_only(body))

    @staticmethod
    def rows(payload) -> list:
        """The `instances` of a /predict body; `InvalidInput` naming the field otherwise."""
        if not isinstance(payload, dict):
            raise InvalidInput([RowError("(body)", 'must be a JSON object {"instances": [[...], ...]}')])
        if unknown := sorted(set(payload) - {"instances"}):
            raise InvalidInput([RowError(name, "unknown field; the body holds only `instances`") for name in unknown])
        if "instances" not in payload:
            raise InvalidInput([RowError("instances", "required: rows of raw feature values")])
        return payload["instances"]

    @staticmethod
    def encode(core, probabilities: np.ndarray, request_id: str, fallback: dict | None = None,
               request: dict | None = None) -> tuple[bytes, list]:
        answer = core.answer(probabilities, request_id)
        return orjson.dumps({**answer, "fallback": fallback} if fallback else answer, option=ORJSON), []

    @staticmethod
    def error(refused: Refused, request_id: str) -> bytes:
        return orjson.dumps(refused.fields(request_id))
