import numpy as np
import pytest
import torch

from mlops_nb.onnx_export import (ParityError, check_parity, export_onnx, onnx_predict, ort_session,
                                  providers_for, quantize_int8)
from mlops_nb.research.model import MLP, Standardizer, predict_proba

RAW = np.random.default_rng(0).uniform(0, 16, size=(512, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = MLP(64, 10, (32,), 0.0).eval()
    standardizer = Standardizer.fit(RAW)
    path = export_onnx(model, standardizer, tmp_path_factory.mktemp("onnx") / "m.onnx")
    return model, standardizer, path


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_onnx_takes_raw_rows_and_matches_torch_with_its_preprocessing_at_any_batch_size(exported, batch):
    model, standardizer, path = exported
    raw = RAW[:batch]
    probs = onnx_predict(ort_session(path), raw)
    assert probs.shape == (batch, 10)
    assert check_parity(predict_proba(model, standardizer.transform(raw)), probs, tolerance=1e-6) < 1e-6


def test_parity_failure_reports_the_figure():
    with pytest.raises(ParityError, match=r"max abs difference 0.1 > tolerance 0.001 \(\[export\] parity_tolerance"):
        check_parity(np.zeros((2, 2)), np.full((2, 2), 0.1), tolerance=1e-3)
    with pytest.raises(ParityError, match="shapes differ"):
        check_parity(np.zeros((2, 2)), np.zeros((3, 2)), tolerance=1e-3)


def test_int8_variant_is_smaller_and_close(exported, tmp_path):
    model, standardizer, path = exported
    small = quantize_int8(path, tmp_path / "m.int8.onnx")
    assert small.stat().st_size < path.stat().st_size
    expected = predict_proba(model, standardizer.transform(RAW[:64]))
    assert np.abs(onnx_predict(ort_session(small), RAW[:64]) - expected).max() < 0.1


def test_provider_choice_follows_the_setting_and_the_host():
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    assert providers_for("auto")[0] == ("CUDAExecutionProvider" if has_cuda else "CPUExecutionProvider")
    if not has_cuda:
        with pytest.raises(RuntimeError, match=r"\[serving\] device = cuda, but this onnxruntime has no CUDA"):
            providers_for("cuda")


class FakeSession:
    """An InferenceSession whose CUDA libraries did not load: asked for CUDA, it runs on CPU."""

    def __init__(self, path, sess_options=None, providers=()):
        self.asked = providers

    def get_providers(self):
        return ["CPUExecutionProvider"]


def test_a_cuda_session_that_fell_back_to_cpu_fails_with_device_cuda_and_warns_with_auto(exported, monkeypatch,
                                                                                         caplog):
    import onnxruntime as ort

    _, _, path = exported
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    monkeypatch.setattr(ort, "preload_dlls", lambda: None, raising=False)
    with pytest.raises(RuntimeError, match="device = cuda: CUDA was offered to ONNX Runtime but the session runs on "
                                           "CPUExecutionProvider"):
        ort_session(path, "cuda")
    session = ort_session(path, "auto")
    assert session.asked == [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]  # fp32 on CUDA
    assert "device = auto: CUDA was offered" in caplog.text and "serving on CPU" in caplog.text
