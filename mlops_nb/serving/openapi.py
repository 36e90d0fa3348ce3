"""The served API's OpenAPI document: the contract, with the row width and bounds of the model and every error
body as it is sent (schemathesis checks the bento against it)."""

from __future__ import annotations

from typing import get_args

from mlops_nb.contracts import PredictionRecord
from mlops_nb.serving.open_inference import LABEL, label_datatype

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


V2_ERROR = {"type": "object", "required": ["error"], "additionalProperties": False,
            "properties": {"error": {"type": "string"}}}


def _errors(*codes: int, shape: str = "Error") -> dict:
    words = {400: "invalid JSON or rows (the field is named)", 401: "missing or wrong API key",
             404: "no such model or version is served here", 413: "body larger than [serving] max_body_bytes",
             415: "body not sent in a media type the route reads",
             501: "this version's model card has no training means (registered before /explain existed)",
             503: "overloaded or still loading: retry after Retry-After seconds; or model_failed: the model call "
                  "failed (`reason`) and no fallback answered"}
    return {str(code): {"description": words[code], "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{shape}"}}}} for code in codes}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _protocol_paths(core, row: dict, max_rows: int, secured: list, protected: tuple) -> dict:
    """MLflow's scoring protocol and the Open Inference Protocol v2, over the same rows and checks as /predict."""
    card, outputs = core.card, [core.output_names[0], LABEL]
    rows = {"type": "array", "minItems": 1, "maxItems": max_rows, "items": row}
    params = {"description": "accepted and ignored, as MLflow ignores them for this model"}
    split = {"type": "object", "required": ["data"], "additionalProperties": False, "properties": {
        "columns": {"type": "array", "nullable": True, "minItems": card.n_features, "maxItems": card.n_features,
                    "description": "names, taken by position as MLflow takes them; the features' own names in another "
                                   "order are refused"},
        "index": {"description": "row labels, ignored"}, "data": rows}}
    records = {"type": "array", "minItems": 1, "maxItems": max_rows, "items": {
        "type": "object", "required": card.features, "additionalProperties": False,
        "properties": {name: row["items"] for name in card.features}}}
    schemas = {"instances": rows, "inputs": rows, "dataframe_split": split, "dataframe_records": records}
    formats = [{"type": "object", "required": [key], "properties": {key: schema, "params": params},
                "not": {"anyOf": [{"required": [other]} for other in schemas if other != key]}}
               for key, schema in schemas.items()]
    n_classes = len(card.classes)
    label = label_datatype(core)
    tensor = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}}, "data": {"type": "array"},
        "parameters": {"type": "object"}}}
    infer_request = {"type": "object", "required": ["inputs"], "properties": {
        "id": {"description": "echoed in the answer"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
            "type": "object", "required": ["name", "datatype", "shape", "data"], "properties": {
                "name": {"type": "string", "enum": [core.input_name]}, "datatype": {"type": "string", "enum": ["FP32"]},
                "shape": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "integer", "minimum": 1,
                                                                                    "maximum": max_rows}},
                "parameters": {"type": "object"}, "data": rows}}},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "enum": outputs}, "parameters": {"type": "object"}}}}}}
    infer_answer = {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "parameters": {"type": "object"}, "outputs": {"type": "array", "items": tensor}}}
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": [card.model_name]}}
    version = {"name": "version", "in": "path", "required": True,
               "schema": {"type": "string", "enum": [str(card.model_version)]}}
    v2_errors = {"404": _errors(404, shape="V2Error")["404"]}
    metadata = {"get": {"summary": "the model's tensors (Open Inference Protocol v2)", "security": secured,
                        "responses": {"200": _json({"type": "object", "required": ["name", "inputs", "outputs"],
                                                    "properties": {"name": {"type": "string"}}}, "model metadata"),
                                      **v2_errors, **_errors(*protected, 503, shape="V2Error")}}}
    ready = {"get": {"summary": "whether the model answers", "security": secured,
                     "responses": {"200": _json({"type": "object", "required": ["name", "ready"]}, "ready"),
                                   **v2_errors, **_errors(*protected, 503, shape="V2Error")}}}
    infer = {"post": {
        "summary": f"classify rows: input `{core.input_name}` FP32 [rows, {card.n_features}] (JSON, or binary "
                   f"with the Inference-Header-Content-Length header); outputs `{outputs[0]}` FP32 "
                   f"[rows, {n_classes}] and `{LABEL}` {label} [rows]", "security": secured,
        "requestBody": {"required": True, "content": {"application/json": {"schema": infer_request}}},
        "responses": {"200": _json(infer_answer, "the requested outputs"), **v2_errors,
                      **_errors(400, *protected, 413, 415, 503, shape="V2Error")}}}
    text = {"text/plain": {"schema": {"type": "string"}}}
    probe = {"get": {"summary": "MLflow's health probe: 200 once the model is loaded (no key)", "responses": {
        "200": {"description": "loaded", "content": text}, **_errors(503, shape="MlflowError")}}}
    health = {"get": {"summary": "200 while the process runs", "responses": {"200": _json(
        {"type": "object", "required": ["live"]}, "live")}}}
    return {
        "/invocations": {"post": {
            "operationId": "invocations", "security": secured,
            "summary": "MLflow's scoring protocol, as `mlflow models serve` has it: one of dataframe_split, "
                       "dataframe_records, instances, inputs (JSON; other keys are ignored, as MLflow ignores "
                       "them), or text/csv: a header line, then one line of values per row",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": formats}}}},
            "responses": {"200": _json({"type": "object", "required": ["predictions"], "properties": {
                "predictions": {"type": "object", "additionalProperties": {"type": "array", "items": {
                    "type": "array", "items": {"type": "number"}}}}}}, "class probabilities by output name"),
                **_errors(400, *protected, 413, 415, 503, shape="MlflowError")}}},
        "/ping": probe, "/health": probe,
        "/version": {"get": {"summary": "the served model's name/version, as text", "responses": {
            "200": {"description": "name/version", "content": text}, **_errors(503, shape="MlflowError")}}},
        "/v2": {"get": {"summary": "server metadata (Open Inference Protocol v2)", "responses": {
            "200": _json({"type": "object", "required": ["name", "version", "extensions"]}, "server metadata"),
            **_errors(503, shape="V2Error")}}},
        "/v2/health/live": health,
        "/v2/health/ready": {"get": {"summary": "200 once the model is loaded", "responses": {
            "200": _json({"type": "object", "required": ["ready"]}, "ready"), **_errors(503, shape="V2Error")}}},
        "/v2/models/{name}": {"parameters": [name], **metadata},
        "/v2/models/{name}/versions/{version}": {"parameters": [name, version], **metadata},
        "/v2/models/{name}/ready": {"parameters": [name], **ready},
        "/v2/models/{name}/versions/{version}/ready": {"parameters": [name, version], **ready},
        "/v2/models/{name}/infer": {"parameters": [name], **infer},
        "/v2/models/{name}/versions/{version}/infer": {"parameters": [name, version], **infer},
    }


def openapi_document(core, *, max_rows: int, api_key: bool, title: str) -> dict:
    """OpenAPI 3.0 for `card`'s model: `POST /predict`, `POST /explain`, `GET /model/metadata`, and the same rows
    over MLflow's scoring protocol and the Open Inference Protocol v2 (`core`: the served ScoringCore)."""
    card = core.card
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
                    **_errors(*protected, 503)}}},
            **_protocol_paths(core, row, max_rows, secured, protected)},
        "components": {"schemas": {"PredictRequest": request, "PredictResponse": response,
                                   "ExplainResponse": explained, "Error": ERROR, "V2Error": V2_ERROR,
                                   "MlflowError": {**ERROR, "required": ["error_code", "message"], "properties": {
                                       "error_code": {"type": "string"}, **ERROR["properties"]}}},
                       **({"securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}}} if api_key else {})},
    }
