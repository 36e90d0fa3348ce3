"""The GPU route's failure mode, with the real onnxruntime-gpu build on a host whose CUDA libraries do not load
(this machine has no GPU and the CUDA wheels are left out): ONNX Runtime offers CUDAExecutionProvider, the
session silently runs on CPU, and mlops-nb must notice. The runtime lives in its own virtual environment
(`$ENGINES_CACHE/gpu-runtime`, made by .ci/run), since it must never be installed beside onnxruntime."""

import os
import subprocess

import pytest
from conftest import REPO, engine_python

from mlops_nb.onnx_export import export_onnx
from mlops_nb.research.model import MLP, Standardizer

pytestmark = pytest.mark.engines

SCRIPT = """
import sys, numpy as np, onnxruntime as ort
from mlops_nb.onnx_export import ort_session
print("available:", ort.get_available_providers())
session = ort_session(sys.argv[1], sys.argv[2])
print("active:", session.get_providers()[0])
print("answer:", session.run(None, {"features": np.zeros((1, 4), np.float32)})[0].shape)
"""


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_a_cuda_session_that_falls_back_to_cpu_fails_for_cuda_and_warns_for_auto(tmp_path, device):
    model = export_onnx(MLP(4, 3, (8,), 0.0).eval(), Standardizer([0.0] * 4, [1.0] * 4, [0.0] * 4), tmp_path / "m.onnx")
    result = subprocess.run([str(engine_python("gpu-runtime")), "-c", SCRIPT, str(model), device], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert "'CUDAExecutionProvider'" in result.stdout, result.stdout + result.stderr
    if device == "cuda":
        assert result.returncode != 0
        assert ("RuntimeError: [serving] device = cuda: CUDA was offered to ONNX Runtime but the session runs on "
                "CPUExecutionProvider") in result.stderr
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "active: CPUExecutionProvider" in result.stdout and "answer: (1, 3)" in result.stdout
        assert "[serving] device = auto: CUDA was offered to ONNX Runtime but the session runs on " \
               "CPUExecutionProvider" in result.stderr
