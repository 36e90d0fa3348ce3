import numpy as np
import pytest
import torch

from mlops_nb.onnx_export import (ParityError, check_parity, export_onnx, onnx_predict, ort_session,
                                  providers_for, quantize_int8)
from mlops_nb.research.model import MLP, predict_proba


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = MLP(64, 10, (32,), 0.0).eval()
    path = export_onnx(model, 64, tmp_path_factory.mktemp("onnx") / "m.onnx")
    return model, path


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_onnx_matches_torch_at_any_batch_size(exported, batch):
    model, path = exported
    x = np.random.default_rng(batch).normal(size=(batch, 64)).astype(np.float32)
    probs = onnx_predict(ort_session(path), x)
    assert probs.shape == (batch, 10)
    assert check_parity(predict_proba(model, x), probs, tolerance=1e-5) < 1e-5


def test_parity_failure_reports_the_figure():
    with pytest.raises(ParityError, match=r"max abs difference 0.1 > tolerance 0.001 \(\[export\] parity_tolerance"):
        check_parity(np.zeros((2, 2)), np.full((2, 2), 0.1), tolerance=1e-3)
    with pytest.raises(ParityError, match="shapes differ"):
        check_parity(np.zeros((2, 2)), np.zeros((3, 2)), tolerance=1e-3)


def test_int8_variant_is_smaller_and_close(exported, tmp_path):
    model, path = exported
    small = quantize_int8(path, tmp_path / "m.int8.onnx")
    assert small.stat().st_size < path.stat().st_size
    x = np.random.default_rng(1).normal(size=(64, 64)).astype(np.float32)
    assert np.abs(onnx_predict(ort_session(small), x) - predict_proba(model, x)).max() < 0.1


def test_provider_choice_follows_the_setting_and_the_host():
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    assert providers_for("auto")[0] == ("CUDAExecutionProvider" if has_cuda else "CPUExecutionProvider")
    if not has_cuda:
        with pytest.raises(RuntimeError, match=r"\[serving\] device = cuda, but this onnxruntime has no CUDA"):
            providers_for("cuda")
