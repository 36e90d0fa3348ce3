"""The served API's OpenAPI document: the contract, with the row width and bounds of the model and every error
body as it is sent (schemathesis checks the bento against it)."""

from __future__ import annotations

from typing import get_args

from mlops_nb.contracts import ModelCard, PredictionRecord

__all__ = ["openapi_document"]

FALLBACK_REASONS = get_args(get_args(PredictionRecord.model_fields["fallback_reason"].annotation)[0])

ERROR = {"type": "object", "required": ["error", "message"], "properties": {
    "error": {"type": "string", "description": "machine-readable code, e.g. invalid_input"},
    "message": {"type": "string", "description": "what was wrong and what to do"},
    "request_id": {"type": "string"},
    "reason": {"type": "string", "enum": list(FALLBACK_REASONS), "description": "model_failed: why the call failed"},
    "failed_version": {"type": "string", "description": "model_failed: the version whose call failed"},
    "errors": {"type": "array", "description": "per-row reasons (the first few)", "items": {
        "type": "object", "required": ["field", "reason"], "properties": {
            "field": {"type": "string", "description": "e.g. instances[0][3]"},
            "reason": {"type": "string"},
            "row": {"type": "integer", "nullable": True}}}}}}


def _errors(*codes: int) -> dict:
    words = {400: "invalid JSON or rows (the field is named)", 401: "missing or wrong API key",
             413: "body larger than [serving] max_body_bytes", 415: "body not sent as application/json",
             501: "this version's model card has no training means (registered before /explain existed)",
             503: "overloaded or still loading: retry after Retry-After seconds; or model_failed: the model call "
                  "failed (`reason`) and no fallback answered"}
    return {str(code): {"description": words[code], "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}} for code in codes}


def openapi_document(card: ModelCard, *, max_rows: int, api_key: bool, title: str) -> dict:
    """OpenAPI 3.0 for `POST /predict`, `POST /explain` and `GET /model/metadata` of `card`'s model."""
    row = {"type": "array", "minItems": card.n_features, "maxItems": card.n_features,
           "description": f"raw values of the {card.n_features} features, in order: {', '.join(card.features[:8])}"
                          + (", ..." if card.n_features > 8 else ""),
           "items": {"type": "number", "minimum": card.feature_min, "maximum": card.feature_max}}
    request = {"type": "object", "required": ["instances"], "additionalProperties": False, "properties": {
        "instances": {"type": "array", "minItems": 1, "maxItems": max_rows, "items": row}}}
    response = {"type": "object", "required": ["predictions", "model_name", "model_version", "request_id"],
                "properties": {
                    "predictions": {"type": "array", "items": {
                        "type": "object", "required": ["label", "probabilities"], "properties": {
                            "label": {"type": "integer" if isinstance(card.classes[0], int) else "string",
                                      "enum": list(card.classes)},
                            "probabilities": {"type": "array", "items": {"type": "number"}}}}},
                    "model_name": {"type": "string"}, "model_version": {"type": "string", "nullable": True},
                    "request_id": {"type": "string"},
                    "fallback": {"type": "object", "description": "only when the routed version failed and the "
                                 "previous champion answered (also said by the X-Fallback header)", "properties": {
                                     "reason": {"type": "string", "enum": list(FALLBACK_REASONS)},
                                     "failed_version": {"type": "string"}, "answered_by": {"type": "string"}}}}}
    prediction = response["properties"]["predictions"]["items"]
    explained = {"type": "object", "required": [*response["required"], "features", "method"], "properties": {
        **response["properties"],
        "predictions": {"type": "array", "items": {**prediction, "required": [*prediction["required"], "attributions"],
                                                   "properties": {**prediction["properties"], "attributions": {
                                                       "type": "array", "items": {"type": "number"},
                                                       "minItems": card.n_features, "maxItems": card.n_features,
                                                       "description": "per feature, in the order of `features`"}}}},
        "features": {"type": "array", "items": {"type": "string"}},
        "method": {"type": "string"}}}
    secured = [{"apiKey": []}] if api_key else []
    protected = (401,) if api_key else ()
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": str(card.model_version),
                 "description": f"{card.model_name} version {card.model_version}, served by mlops-nb"},
        "paths": {
            "/predict": {"post": {
                "operationId": "predict", "summary": "classify rows of raw feature values", "security": secured,
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/PredictRequest"}}}},
                "responses": {"200": {"description": "a label and class probabilities per row", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}}},
                    **_errors(400, *protected, 413, 415, 503)}}},
            "/explain": {"post": {
                "operationId": "explain", "security": secured,
                "summary": "classify rows and attribute each answer to the features (occlusion against the training "
                           "mean, one batched ONNX call)",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/PredictRequest"}}}},
                "responses": {"200": {"description": "a label, class probabilities and per-feature attributions per "
                                                     "row", "content": {"application/json": {
                                                         "schema": {"$ref": "#/components/schemas/ExplainResponse"}}}},
                              **_errors(400, *protected, 413, 415, 501, 503)}}},
            "/model/metadata": {"get": {
                "operationId": "metadata", "summary": "the model card and the ONNX Runtime provider in use",
                "security": secured,
                "responses": {"200": {"description": "model card, provider, batching", "content": {
                    "application/json": {"schema": {"type": "object", "required": ["model_name", "provider"],
                                                    "properties": {"model_name": {"type": "string"},
                                                                   "provider": {"type": "string"}}}}}},
                    **_errors(*protected, 503)}}}},
        "components": {"schemas": {"PredictRequest": request, "PredictResponse": response,
                                   "ExplainResponse": explained, "Error": ERROR},
                       **({"securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}}} if api_key else {})},
    }
