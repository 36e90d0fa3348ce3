"""The Open Inference Protocol v2 over REST (as KServe and Triton speak it), with Triton's binary tensor extension:
`POST /v2/models/{name}[/versions/{version}]/infer` with the model's FP32 input tensor, answered with the class
probabilities and the label; metadata and readiness; errors as `{"error": message}`."""

from __future__ import annotations

import re
import struct

import numpy as np
import orjson

from mlops_nb.serving.codecs import Refused, Rows, json_payload

__all__ = ["MODEL_PATH", "LABEL", "V2Codec", "label_datatype", "model_metadata"]

MODEL_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?")
HEADER_LENGTH = b"inference-header-content-length"  # the binary extension: the JSON part's length in bytes
LABEL = "label"
NUMBERS = {int, float}


def label_datatype(core) -> str:
    """The v2 datatype of the label output: INT64 for integer classes, else BYTES."""
    return "INT64" if core.classes.dtype.kind in "iu" else "BYTES"


def model_metadata(core) -> dict:
    """The model's metadata as the protocol defines it: name, versions, platform, input and output tensors."""
    card = core.card
    return {"name": card.model_name, "versions": [str(card.model_version)], "platform": "onnxruntime_onnx",
            "inputs": [{"name": core.input_name, "datatype": "FP32", "shape": [-1, card.n_features]}],
            "outputs": [{"name": core.output_names[0], "datatype": "FP32", "shape": [-1, len(card.classes)]},
                        {"name": LABEL, "datatype": label_datatype(core), "shape": [-1]}]}


def _parameters(holder: dict, field: str) -> dict:
    """The `parameters` object of a request, tensor or output (empty when absent); `Refused` when not an object."""
    parameters = holder.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise Refused(400, "invalid_input", f"{field}: must be an object")
    return parameters


def _binary(values: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":  # each element: its length as 4 bytes, little-endian, then its UTF-8 bytes
        return b"".join(struct.pack("<I", len(b)) + b for b in (str(v).encode() for v in values))
    return np.ascontiguousarray(values, dtype="<f4" if datatype == "FP32" else "<i8").tobytes()


class V2Codec:
    """`POST /v2/models/{name}/infer`: one input tensor named as the ONNX graph's input, FP32, shape [rows,
    features], its data in JSON (flat or nested) or binary; outputs the probabilities and the label."""

    def __init__(self, core) -> None:
        self.input_name, self.n_features = core.input_name, core.card.n_features
        self.outputs = (core.output_names[0], LABEL)

    def parse(self, body: bytes, headers: dict) -> Rows:
        media = headers.get(b"content-type", b"application/json")
        if not media.startswith((b"application/json", b"application/octet-stream")):
            raise Refused(415, "unsupported_media_type", "send application/json, or application/octet-stream with "
                                                         "the binary tensor extension")
        size = headers.get(HEADER_LENGTH)
        if size is not None and not (size.isdigit() and int(size) <= len(body)):
            raise Refused(400, "invalid_input", f"Inference-Header-Content-Length {size.decode('latin-1')!r} is not "
                                                f"a length within the {len(body)}-byte body")
        split = int(size) if size is not None else len(body)
        request = json_payload(body[:split])
        if not isinstance(request, dict) or not isinstance(inputs := request.get("inputs"), list) or len(inputs) != 1:
            raise Refused(400, "invalid_input", f"inputs: send exactly one input tensor, {self.input_name!r}")
        values, numbers = self._tensor(inputs[0], body[split:])
        return Rows(values, numbers, self.input_name, {"id": request.get("id"), "outputs": self._wanted(request)})

    def _tensor(self, tensor, binary: bytes) -> tuple[list | np.ndarray, bool]:
        """The input tensor's rows and whether they are known to be plain numbers."""
        if not isinstance(tensor, dict) or tensor.get("name") != self.input_name:
            raise Refused(400, "invalid_input", f"inputs[0].name: expected {self.input_name!r}")
        if tensor.get("datatype") != "FP32":
            raise Refused(400, "invalid_input", f"inputs[0].datatype: expected FP32, got {tensor.get('datatype')!r}")
        shape = tensor.get("shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(type(n) is int and n >= 0 for n in shape)
                and shape[1] == self.n_features):
            raise Refused(400, "invalid_input", f"inputs[0].shape: expected [rows, {self.n_features}], got {shape!r}")
        count = shape[0] * shape[1]
        parameters = _parameters(tensor, "inputs[0].parameters")
        if "binary_data_size" in parameters:
            size = parameters["binary_data_size"]
            if size != count * 4 or len(binary) != size:
                raise Refused(400, "invalid_input", f"inputs[0].parameters.binary_data_size: {size!r}; shape "
                                                    f"{shape} of FP32 is {count * 4} bytes, {len(binary)} were sent")
            return np.frombuffer(binary, "<f4").reshape(shape), True
        data = tensor.get("data")
        if isinstance(data, list) and data and isinstance(data[0], list) and len(data) == shape[0]:  # nested rows
            return data, all(set(map(type, row)) <= NUMBERS for row in data if isinstance(row, list))
        if not isinstance(data, list) or len(data) != count or data and isinstance(data[0], list):
            raise Refused(400, "invalid_input", f"inputs[0].data: expected {count} values for shape {shape}, flat "
                                                f"or nested, got {len(data) if isinstance(data, list) else data!r}")
        return [data[i:i + shape[1]] for i in range(0, count, shape[1])], set(map(type, data)) <= NUMBERS

    def _wanted(self, request: dict) -> list[tuple[str, bool]]:
        """The requested outputs as (name, binary): all when none are named (binary if the request says so)."""
        every = bool(_parameters(request, "parameters").get("binary_data_output", False))
        wanted = request.get("outputs")
        if wanted is None:
            return [(name, every) for name in self.outputs]
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and o.get("name") in self.outputs
                                                   for o in wanted):
            raise Refused(400, "invalid_input", f"outputs: name some of {list(self.outputs)}")
        return [(o["name"], bool(_parameters(o, f"outputs[{i}].parameters").get("binary_data", every)))
                for i, o in enumerate(wanted)]

    def encode(self, core, probabilities: np.ndarray, request_id: str, fallback: dict | None = None,
               request: dict | None = None) -> tuple[bytes, list]:
        labels = core.classes[probabilities.argmax(axis=1)]
        tensors = {self.outputs[0]: (probabilities, "FP32"), LABEL: (labels, label_datatype(core))}
        outputs, blobs = [], []
        for name, binary in request["outputs"]:
            values, datatype = tensors[name]
            output = {"name": name, "datatype": datatype, "shape": list(values.shape)}
            if binary:
                blobs.append(_binary(values.ravel(), datatype))
                output["parameters"] = {"binary_data_size": len(blobs[-1])}
            else:
                output["data"] = values.ravel() if datatype == "FP32" else values.ravel().tolist()
            outputs.append(output)
        answer = {"model_name": core.card.model_name, "model_version": str(core.card.model_version),
                  "id": str(request["id"] or request_id), "outputs": outputs}
        if fallback:
            answer["parameters"] = {"fallback": f"{fallback['reason']}; failed-version={fallback['failed_version']}"}
        header = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
        if not blobs:
            return header, []
        return header + b"".join(blobs), [(b"content-type", b"application/octet-stream"),
                                          (HEADER_LENGTH, str(len(header)).encode())]

    @staticmethod
    def error(refused: Refused, request_id: str) -> bytes:
        return orjson.dumps({"error": refused.message})
