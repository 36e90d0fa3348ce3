from pathlib import Path

import pytest

from mlops_nb.settings import SettingsError, load_settings

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "settings.ini").write_text(text)
    return tmp_path


def test_project_settings_load_with_defaults_that_work():
    s = load_settings(REPO, environ={})
    assert s.data.source == "digits" and s.training.hidden_sizes == (256, 128)
    assert s.tracking_uri == f"sqlite:///{REPO / 'mlruns.db'}"
    assert s.products_dir == REPO / "products"


def test_empty_file_gives_all_defaults(tmp_path):
    s = load_settings(write(tmp_path, ""), environ={})
    assert s.training.seed == 42 and s.serving.device == "auto"


def test_environment_overrides_a_key(tmp_path):
    s = load_settings(write(tmp_path, "[training]\nepochs = 5\n"), environ={"MLOPS_NB_TRAINING_EPOCHS": "2"})
    assert s.training.epochs == 2


@pytest.mark.parametrize("text, expected", [
    ("[training]\nepochs = abc\n", "[training] epochs = 'abc': Input should be a valid integer"),
    ("[training]\nepochs = 0\n", "[training] epochs = '0': Input should be greater than or equal to 1"),
    ("[serving]\ndevice = tpu\n", "[serving] device = 'tpu': Input should be 'auto', 'cpu' or 'cuda'"),
    ("[training]\nhidden_sizes = 128,x\n", "[training] hidden_sizes = '128,x': expected comma-separated positive"),
    ("[training]\nepoch = 3\n", "[training] epoch: unknown key; allowed keys: batch_size, dropout, epochs"),
    ("[trainig]\nepochs = 3\n", "[trainig]: unknown key; allowed keys: data, evaluation, export, gates"),
    ("[validation]\nmax_missing_fraction = 1.5\n",
     "[validation] max_missing_fraction = '1.5': Input should be less than 1"),
    ("[registry]\nmodel_name = has space\n", "[registry] model_name = 'has space': String should match pattern"),
    ("[monitoring]\nlog_predictions = maybe\n", "[monitoring] log_predictions = 'maybe': Input should be a valid boolean"),
    ("[serving]\nshadow_fraction = 1.5\n", "[serving] shadow_fraction = '1.5': Input should be less than or equal to 1"),
    ("[serving]\nshadow_fraction = 0.1\n[monitoring]\nlog_predictions = false\n",
     "settings.ini: [serving] shadow_fraction or canary_fraction > 0 needs [monitoring] log_predictions = true"),
    ("[serving]\nshadow_fraction = 0.1\ncanary_fraction = 0.1\n", "the challenger is either a shadow"),
    ("[monitoring]\nhash_fields = subject\n", "hash_fields needs salt_env"),
    ("[monitoring]\nsalt_env = MLOPS_NB_SALT\n", "salt_env"),
])
def test_bad_values_are_rejected_naming_section_key_and_allowed_values(tmp_path, text, expected):
    with pytest.raises(SettingsError) as error:
        load_settings(write(tmp_path, text), environ={})
    assert expected in str(error.value)
    assert str(tmp_path / "settings.ini") in str(error.value)


def test_bad_environment_override_is_rejected(tmp_path):
    with pytest.raises(SettingsError, match=r"\[gates\] min_score = '2': Input should be less than or equal to 1"):
        load_settings(write(tmp_path, ""), environ={"MLOPS_NB_GATES_MIN_SCORE": "2"})
    with pytest.raises(SettingsError, match="MLOPS_NB_NOSECTION: expected MLOPS_NB_<SECTION>_<KEY>"):
        load_settings(write(tmp_path, ""), environ={"MLOPS_NB_NOSECTION": "1"})


def test_missing_settings_file_and_broken_ini_are_clear(tmp_path):
    with pytest.raises(SettingsError, match="settings.ini does not exist"):
        load_settings(tmp_path, environ={})
    with pytest.raises(SettingsError, match="not a valid INI file"):
        load_settings(write(tmp_path, "epochs = 3\n"), environ={})


def test_relative_paths_resolve_against_the_project_root(tmp_path):
    s = load_settings(write(tmp_path, "[data]\nsource = data/x.csv\n[tracking]\nuri = sqlite:///db/m.db\n"),
                      environ={})
    assert s.data_source == str(tmp_path / "data/x.csv")
    assert s.tracking_uri == f"sqlite:///{tmp_path / 'db/m.db'}"


def test_the_api_key_setting_names_a_variable_never_a_settings_one(tmp_path):
    assert load_settings(write(tmp_path, "[serving]\napi_key_env = SERVING_API_KEY\n"), environ={}).serving.api_key_env \
        == "SERVING_API_KEY"
    with pytest.raises(SettingsError, match="does not start with MLOPS_NB_"):
        load_settings(write(tmp_path, "[serving]\napi_key_env = MLOPS_NB_KEY\n"), environ={})


def test_the_tracking_uri_is_a_local_store_or_a_server_and_never_holds_credentials(tmp_path):
    root = write(tmp_path, "")
    remote = load_settings(root, environ={"MLOPS_NB_TRACKING_URI": "http://127.0.0.1:5000"})
    assert remote.tracking.remote and remote.tracking_uri == "http://127.0.0.1:5000"
    assert not load_settings(root, environ={}).tracking.remote
    with pytest.raises(SettingsError) as error:
        load_settings(root, environ={"MLOPS_NB_TRACKING_URI": "https://ci:hunter2@mlflow.example.com"})
    assert "MLFLOW_TRACKING_USERNAME" in str(error.value) and "hunter2" not in str(error.value)
    with pytest.raises(SettingsError, match="expected sqlite:///PATH"):
        load_settings(root, environ={"MLOPS_NB_TRACKING_URI": "mlruns"})


def test_the_gate_floor_keeps_its_old_name_and_the_metric_is_checked(tmp_path):
    assert load_settings(write(tmp_path, "[gates]\nmin_accuracy = 0.9\n"), environ={}).gates.min_score == 0.9
    with pytest.raises(SettingsError, match=r"\[gates\] metric = 'f1'"):
        load_settings(write(tmp_path, "[gates]\nmetric = f1\n"), environ={})


def test_a_search_grid_is_the_product_of_its_values_validated_as_training_settings(tmp_path):
    s = load_settings(write(tmp_path, "[search]\nhidden_sizes = 64 | 32,16\nlearning_rate = 0.01|0.001\n"), environ={})
    assert [(c.hidden_sizes, c.learning_rate) for c in s.search.candidates(s.training)] == [
        ((64,), 0.01), ((64,), 0.001), ((32, 16), 0.01), ((32, 16), 0.001)]
    assert load_settings(write(tmp_path, ""), environ={}).search.candidates(s.training) == [s.training]
    with pytest.raises(SettingsError, match=r"\[search\] gives a candidate \[training\] cannot take: dropout = 1.5"):
        load_settings(write(tmp_path, "[search]\ndropout = 0.1 | 1.5\n"), environ={})
