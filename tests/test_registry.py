"""Quality gates and aliases against a real MLflow registry (sqlite, in a temp folder)."""

import json

import pytest
from conftest import register

from mlops_nb.contracts import ModelCard
from mlops_nb.registry import CHALLENGER, CHAMPION, RegistryError, champion, evaluate_gates, gate
from mlops_nb.settings import GatesSettings
from mlops_nb.tracking import connect


@pytest.mark.parametrize("score, champion_score, baselines, passed, failed_gate", [
    (0.97, None, None, True, None),
    (0.94, None, None, False, "min_score"),
    (0.97, 0.975, None, True, None),       # within the allowed regression
    (0.96, 0.975, None, False, "max_regression"),
    (0.99, 0.975, None, True, None),
    (0.97, None, {"majority_class": 0.10, "logistic_regression": 0.94}, True, None),  # lift 0.03 >= 0.02
    (0.97, None, {"majority_class": 0.96, "logistic_regression": 0.94}, False, "min_lift"),  # lift 0.01
    (1.0, None, {"majority_class": 0.5, "logistic_regression": 1.0}, True, None),  # a perfect baseline, matched
])
def test_gates(score, champion_score, baselines, passed, failed_gate):
    result = evaluate_gates(score, champion_score, baselines, metric="macro_f1", min_score=0.95, max_regression=0.01,
                            min_lift=0.02)
    assert result.passed is passed
    assert [c["gate"] for c in result.checks if not c["passed"]] == ([failed_gate] if failed_gate else [])
    assert result.reason.startswith("all gates passed") is passed
    if baselines:  # passed or not, the reason names the metric, the best baseline, both figures and the lift
        best = max(baselines, key=baselines.get)
        assert f"test macro_f1 {score:.4f}" in result.reason
        assert f"baseline {best} {baselines[best]:.4f}" in result.reason
        assert f"(lift {score - baselines[best]:+.4f})" in result.reason


@pytest.mark.parametrize("robust, required, passed", [(0.80, 0.0, True), (0.80, 0.75, True), (0.80, 0.85, False),
                                                      (None, 0.85, False)])
def test_the_robustness_gate_is_off_by_default_and_blocks_when_set_above_the_figure(robust, required, passed):
    result = evaluate_gates(0.97, None, None, robust, min_score=0.95, max_regression=0.01,
                            min_robust_accuracy=required)
    assert result.passed is passed and ("min_robust_accuracy" in result.reason) is not passed
    assert [c["gate"] for c in result.checks] == ["min_score"] + (["min_robust_accuracy"] if required else [])


def card(**figures) -> ModelCard:
    return ModelCard(model_name="m", model_version="1", run_id="r", variant="fp32", features=["a"], classes=[0, 1, 2],
                     feature_min=0, feature_max=1, data_sha256="d", onnx_sha256="o", weights_sha256="w",
                     test_accuracy=0.97, parity_max_abs_diff=0, **figures)


def test_gate_reads_the_metric_from_cards_old_and_new_and_never_skips_a_champion_without_it():
    gates = GatesSettings(metric="macro_f1", min_score=0.9, max_regression=0.01)
    new = card(test_metrics={"accuracy": 0.97, "macro_f1": 0.96},
               baselines={"majority_class": {"macro_f1": 0.2}, "logistic_regression": {"macro_f1": 0.95}})
    assert gate(new, None, gates).passed and "lift +0.0100" in gate(new, None, gates).reason
    old = card()  # registered before [gates] metric: accuracy only
    assert gate(old, None, GatesSettings(min_score=0.9)).passed  # accuracy falls back to test_accuracy
    with pytest.raises(RegistryError, match="metric = macro_f1: version 1's card has no such test figure"):
        gate(old, None, gates)
    against_old = gate(new, old, gates)
    assert not against_old.passed and "champion version 1's card has no test macro_f1" in against_old.reason
    with pytest.raises(RegistryError, match="roc_auc needs two classes"):
        gate(new, None, GatesSettings(metric="roc_auc"))


def test_failed_gate_keeps_the_old_champion_and_says_why(registry):
    settings, onnx_path = registry
    v1, first = register(settings, onnx_path, 0.95)
    v2, second = register(settings, onnx_path, 0.91)  # passes the floor, regresses by 0.04 > 0.01
    client = connect(settings)
    assert first.passed and not second.passed
    assert champion("gate-test", settings).version == v1
    assert client.get_model_version_by_alias("gate-test", CHALLENGER).version == v2
    tags = client.get_model_version("gate-test", v2).tags
    assert tags["mlops_nb.gates_passed"] == "False" and tags["mlops_nb.champion_before"] == str(v1)
    assert "champion 0.9500 - max_regression 0.01" in tags["mlops_nb.gates_reason"]
    assert json.loads(tags["mlops_nb.gates"])["passed"] is False
    v3, third = register(settings, onnx_path, 0.96)
    assert third.passed and client.get_model_version_by_alias("gate-test", CHAMPION).version == v3


def test_registered_model_carries_signature_example_and_extra_files(registry, tmp_path):
    import mlflow

    settings, onnx_path = registry
    version, _ = register(settings, onnx_path, 0.95)
    info = mlflow.models.get_model_info(f"models:/gate-test/{version}")
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 4]
    local = mlflow.artifacts.download_artifacts(f"models:/gate-test/{version}", dst_path=str(tmp_path / "dl"))
    card = ModelCard.model_validate_json((tmp_path / "dl" / "extra_files" / "model_card.json").read_text())
    assert card.features == ["a", "b", "c", "d"]
    assert ModelCard.from_tags(connect(settings).get_model_version("gate-test", version).tags) == card
    assert json.loads((tmp_path / "dl" / "extra_files" / "reference_profile.json").read_text()) == {"range": [0, 1]}
    assert (tmp_path / "dl" / "input_example.json").exists() and local


def test_a_champion_without_a_model_card_stops_the_gates_instead_of_skipping_the_comparison(registry):
    settings, onnx_path = registry
    v1, _ = register(settings, onnx_path, 0.95)
    connect(settings).delete_model_version_tag("gate-test", v1, "mlops_nb.test_accuracy")
    with pytest.raises(RegistryError, match=f"version {v1} is the champion, but no model card in the registry tags "
                                            r"\(missing mlops_nb.test_accuracy\)"):
        register(settings, onnx_path, 0.96)


def test_a_missing_model_or_alias_means_no_champion(registry):
    settings, onnx_path = registry
    assert champion("gate-test", settings) is None  # no registered model yet
    register(settings, onnx_path, 0.5)  # registered, gates failed: no champion alias
    assert champion("gate-test", settings) is None
