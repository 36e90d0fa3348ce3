"""Torch -> ONNX export with a measured parity check, int8 and fp16 variants, ONNX Runtime sessions and latency."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from mlops_nb.products import atomic_path

__all__ = ["ParityError", "export_onnx", "check_parity", "quantize_int8", "to_fp16", "ort_session", "onnx_predict",
           "latency_ms", "max_abs_diff", "providers_for", "INPUT_NAME", "OUTPUT_NAME", "CUDA", "CPU"]

INPUT_NAME, OUTPUT_NAME = "features", "probabilities"


class ParityError(AssertionError):
    """ONNX Runtime and torch disagree by more than the tolerance set in settings.ini."""


def _serving_model(model, standardizer):
    import torch

    class ServingModel(torch.nn.Module):
        """Raw feature rows -> class probabilities: missing values filled, standardization, the classifier and
        softmax in one graph."""

        def __init__(self, inner, standardizer):
            super().__init__()
            self.inner = inner
            for name in ("fill", "mean", "scale"):
                self.register_buffer(name, torch.as_tensor(getattr(standardizer, name), dtype=torch.float32))

        def forward(self, x):
            x = torch.where(torch.isnan(x), self.fill, x)
            return torch.softmax(self.inner((x - self.mean) / self.scale), dim=1)

    return ServingModel(model, standardizer).eval()


def export_onnx(model, standardizer, path: Path | str, *, opset: int = 18) -> Path:
    """Export `model` (logits) with its `standardizer` folded in: `features[batch, n]` of raw values (NaN: missing) ->
    `probabilities[batch, classes]`. Any ONNX consumer then gives the same answers, preprocessing included."""
    import onnx
    import torch

    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(_serving_model(model, standardizer), (torch.zeros(2, standardizer.n_features),), str(tmp),
                          dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                          dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False)
        graph = onnx.load(str(tmp))
        for node in graph.graph.node:  # the exporter's stack traces name this machine's folders: drop them
            del node.metadata_props[:]
            node.doc_string = ""
        onnx.save(graph, str(tmp))
        onnx.checker.check_model(str(tmp))
    return Path(path)


def quantize_int8(source: Path | str, path: Path | str) -> Path:
    """Dynamic int8 quantization of the weights (activations stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # its "consider pre-processing" advice goes to the root logger
    try:
        with atomic_path(path) as tmp:
            quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    return Path(path)


def to_fp16(source: Path | str, path: Path | str) -> Path:
    """Half-precision weights and arithmetic; the input and output stay float32, so callers do not change."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its notes on values clamped to fp16's range
        onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), str(tmp))
    return Path(path)


CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
logger = logging.getLogger(__name__)


def providers_for(device: str = "auto") -> list[str]:
    """ONNX Runtime providers for a device setting: CUDA first when asked for (or `auto` and available)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise RuntimeError("[serving] device = cuda, but this onnxruntime has no CUDAExecutionProvider "
                           f"(available: {available}); install the gpu extra (onnxruntime-gpu) or set device = auto")
    if device in ("cuda", "auto") and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


# full fp32 matrix products on CUDA: with TF32 (ONNX Runtime's default on Ampere and newer) the served probabilities
# moved 6.2e-4 from the CPU ones on an H200, past the [export] parity_tolerance the export gate checks (1e-4)
CUDA_OPTIONS = {"use_tf32": "0"}


def ort_session(path: Path | str, device: str = "cpu", *, threads: int | None = None):
    """An ONNX Runtime session on the providers `providers_for(device)` picks, checked after creation: a CUDA
    session whose libraries did not load runs on CPU silently, so `cuda` fails then and `auto` warns."""
    import onnxruntime as ort

    providers = providers_for(device)
    if CUDA in providers and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels the gpu extra installs
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), sess_options=options,
                                   providers=[(p, CUDA_OPTIONS) if p == CUDA else p for p in providers])
    active = session.get_providers()[0]
    if providers[0] == CUDA and active != CUDA:
        message = (f"CUDA was offered to ONNX Runtime but the session runs on {active}: the CUDA or cuDNN "
                   "libraries did not load (see ONNX Runtime's error above)")
        if device == "cuda":
            raise RuntimeError(f"[serving] device = cuda: {message}; fix the CUDA install or set device = auto")
        logger.warning("[serving] device = auto: %s; serving on CPU", message)
    return session


def onnx_predict(session, features: np.ndarray) -> np.ndarray:
    """Class probabilities from an ONNX Runtime session for rows of raw feature values."""
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(features, dtype=np.float32)})[0]


def latency_ms(path: Path | str, features: np.ndarray, batch: int, *, seconds: float = 0.2) -> float:
    """Median milliseconds of one ONNX Runtime call on `batch` rows (cycled from `features`), on one CPU core."""
    import time

    session = ort_session(path, "cpu", threads=1)
    rows = np.ascontiguousarray(np.resize(features, (batch, features.shape[1])), dtype=np.float32)
    times, deadline = [], time.perf_counter() + seconds
    onnx_predict(session, rows)  # warm-up: the first call allocates
    while time.perf_counter() < deadline or len(times) < 5:
        started = time.perf_counter()
        onnx_predict(session, rows)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute element-wise difference between two equally shaped arrays."""
    if a.shape != b.shape:
        raise ParityError(f"output shapes differ: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def check_parity(reference: np.ndarray, candidate: np.ndarray, *, tolerance: float, what: str = "ONNX") -> float:
    """Max |candidate - reference|; raise `ParityError` with the figure when it exceeds `tolerance`."""
    diff = max_abs_diff(reference, candidate)
    if diff > tolerance:
        raise ParityError(f"{what} parity failed: max abs difference {diff:.3g} > tolerance {tolerance:.3g} "
                          "([export] parity_tolerance in settings.ini)")
    return diff
