"""The code the notebooks export (mlops_nb.research), tested as a library."""

import numpy as np
import pandas as pd
import pytest

from mlops_nb.research.data import frame_sha256, load_source, read_snapshot, split_indices, write_snapshot
from mlops_nb.research.evaluate import classification_metrics, misclassified_rows, permutation_importance, slice_metrics
from mlops_nb.research.model import Standardizer, load_model, predict_proba, save_model, train_model, weights_sha256
from mlops_nb.research.validate import DataValidationError, feature_profile, leakage_checks, validate_frame


@pytest.fixture(scope="module")
def digits():
    return load_source("digits")


def test_snapshot_is_named_by_content_and_detects_tampering(tmp_path, digits):
    path, sha = write_snapshot(digits, tmp_path)
    assert path.name == f"{sha}.parquet"
    assert write_snapshot(digits.copy(), tmp_path) == (path, sha)  # same content, same file, not rewritten
    assert read_snapshot(path, sha).equals(digits)
    digits.iloc[:5].to_parquet(path)
    with pytest.raises(ValueError, match="it was modified"):
        read_snapshot(path, sha)


def test_hash_changes_with_any_value_or_dtype(digits):
    changed = digits.copy()
    changed.iloc[0, 0] += 1
    assert frame_sha256(changed) != frame_sha256(digits)
    assert frame_sha256(digits.astype({"pixel_0_1": "float32"})) != frame_sha256(digits)


def test_csv_and_parquet_sources(tmp_path, digits):
    digits.head(50).to_csv(tmp_path / "d.csv", index=False)
    assert load_source(str(tmp_path / "d.csv")).shape == (50, 65)
    with pytest.raises(FileNotFoundError, match=r"\[data\] source"):
        load_source(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="no target column 'label'"):
        load_source(str(tmp_path / "d.csv"), target="label")


@pytest.mark.parametrize("seed", [0, 7])
def test_split_is_stratified_disjoint_and_seeded(digits, seed):
    split = split_indices(digits["target"], val_fraction=0.15, test_fraction=0.15, seed=seed)
    assert sorted(split["train"] + split["val"] + split["test"]) == list(range(len(digits)))
    shares = {k: digits["target"].iloc[v].value_counts(normalize=True).sort_index() for k, v in split.items()}
    assert (shares["test"] - shares["train"]).abs().max() < 0.02
    assert split == split_indices(digits["target"], val_fraction=0.15, test_fraction=0.15, seed=seed)


def test_validation_lists_every_problem(digits):
    bad = digits.head(200).copy()
    bad.iloc[:20, 3] = np.nan
    bad.iloc[1, 4] = np.inf
    bad.loc[bad["target"] == 3, "target"] = 9
    bad = pd.concat([bad, bad.iloc[2:3].assign(target=3)])
    with pytest.raises(DataValidationError) as error:
        validate_frame(bad, target="target", min_class_fraction=0.05, max_missing_fraction=0.05)
    message = str(error.value)
    assert "feature columns missing more than 0.05 of their values" in message and "'pixel_0_3': 0.1045" in message
    assert "infinite values: {'pixel_0_4': 1}" in message
    assert "classes below the minimum share 0.05" in message and "'3'" in message


def test_validation_passes_on_digits_and_profiles_features(digits):
    report = validate_frame(digits, target="target", min_class_fraction=0.05, max_missing_fraction=0.0)
    assert report["rows"] == 1797 and len(report["class_share"]) == 10 and report["missing_values"] == 0
    profile = feature_profile(digits.drop(columns="target"))
    assert sum(profile["features"]["pixel_3_3"]["counts"]) == 1797 and profile["range"] == [0.0, 16.0]


def test_standardizer_round_trips_and_ignores_constant_features():
    x = np.array([[0.0, 1.0, 4.0], [2.0, 1.0, 8.0]])
    st = Standardizer.fit(x)
    assert np.allclose(st.transform(x), [[-1, 0, -1], [1, 0, 1]])
    assert np.array_equal(Standardizer.from_dict(st.to_dict()).transform(x), st.transform(x))


def test_training_is_bit_for_bit_repeatable_and_saves_everything(tmp_path, digits):
    x = Standardizer.fit(digits.drop(columns="target").to_numpy()).transform(digits.drop(columns="target"))
    y = digits["target"].to_numpy()
    kw = dict(hidden_sizes=(32,), dropout=0.1, epochs=3, batch_size=64, learning_rate=0.01, weight_decay=0.0)
    first, history = train_model(x[:1200], y[:1200], x[1200:], y[1200:], seed=3, **kw)
    second, _ = train_model(x[:1200], y[:1200], x[1200:], y[1200:], seed=3, **kw)
    other, _ = train_model(x[:1200], y[:1200], x[1200:], y[1200:], seed=4, **kw)
    assert weights_sha256(first) == weights_sha256(second) != weights_sha256(other)
    assert history[-1]["val_accuracy"] > 0.8
    save_model(tmp_path / "m.pt", first, Standardizer.fit(x))
    loaded, _ = load_model(tmp_path / "m.pt")
    assert weights_sha256(loaded) == weights_sha256(first)


def test_metrics_match_a_hand_computed_case():
    m = classification_metrics([0, 1, 1, 0], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.9, 0.1]])
    assert m["accuracy"] == 0.75
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.4, 0.9])))



def test_digits_has_no_leakage_between_its_splits(digits):
    split = split_indices(digits["target"].to_numpy(), val_fraction=0.15, test_fraction=0.15, seed=42)
    found = leakage_checks(digits, split, target="target", duplicate_rows="error", target_leak="error",
                           max_single_feature_score=0.98)
    assert found["duplicates"] == {"val": 0, "test": 0} and found["warnings"] == []
    assert found["best_single_feature"]["balanced_accuracy"] < 0.5  # no pixel tells the digit on its own


def test_error_analysis_ranks_a_corrupted_slice_first(digits):
    """A scanner column (0-3) whose scanner 3 rows have random labels, in every split: the model cannot learn them."""
    rng = np.random.default_rng(0)
    frame = digits.assign(scanner=rng.integers(0, 4, len(digits)))
    broken = frame["scanner"] == 3
    frame.loc[broken, "target"] = rng.integers(0, 10, int(broken.sum()))
    features = frame.drop(columns="target")
    split = split_indices(frame["target"].to_numpy(), val_fraction=0.15, test_fraction=0.15, seed=42)
    standardizer = Standardizer.fit(features.iloc[split["train"]].to_numpy())
    x = {s: standardizer.transform(features.iloc[split[s]].to_numpy()) for s in split}
    y = {s: frame["target"].to_numpy()[split[s]] for s in split}
    model, _ = train_model(x["train"], y["train"], x["val"], y["val"], hidden_sizes=(64,), dropout=0.1, epochs=15,
                           batch_size=64, learning_rate=0.005, weight_decay=0.0, seed=0)
    probabilities = predict_proba(model, x["test"])
    slices = slice_metrics(features.iloc[split["test"]], y["test"], probabilities.argmax(1), list(range(10)),
                           slice_columns=["scanner"])
    print(slices.head(3).to_string(index=False))
    assert slices["slice"].iloc[0] == "scanner = 3" and slices["accuracy"].iloc[0] < 0.5
    wrong = misclassified_rows(split["test"], y["test"], probabilities, list(range(10)))
    assert broken.iloc[wrong["row_id"]].mean() > 0.5  # most misclassified rows come from the corrupted slice


def test_permutation_importance_ranks_the_two_features_that_carry_the_signal_first():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(900, 8)).astype(np.float32)
    labels = (features[:, 2] - features[:, 5] > 0).astype(int)  # only features 2 and 5 matter
    standardizer = Standardizer.fit(features[:600])
    model, _ = train_model(standardizer.transform(features[:600]), labels[:600], standardizer.transform(features[600:]),
                           labels[600:], hidden_sizes=(32,), dropout=0.0, epochs=30, batch_size=32,
                           learning_rate=0.01, weight_decay=0.0, seed=0)
    lost = permutation_importance(model, standardizer, features[600:], labels[600:], seed=0)
    assert sorted(np.argsort(-lost)[:2]) == [2, 5] and min(lost[2], lost[5]) > 5 * max(np.delete(lost, [2, 5]))
