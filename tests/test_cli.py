import json

from mlops_nb.cli import main


def test_settings_command_prints_the_validated_settings(tmp_path, monkeypatch, capsys):
    (tmp_path / "settings.ini").write_text("[training]\nepochs = 3\n")
    monkeypatch.setenv("MLOPS_NB_ROOT", str(tmp_path))
    assert main(["settings"]) == 0
    assert json.loads(capsys.readouterr().out)["training"]["epochs"] == 3


def test_a_bad_setting_exits_2_with_the_reason(tmp_path, monkeypatch, capsys):
    (tmp_path / "settings.ini").write_text("[serving]\ndevice = gpu\n")
    monkeypatch.setenv("MLOPS_NB_ROOT", str(tmp_path))
    assert main(["settings"]) == 2
    assert "[serving] device = 'gpu': Input should be 'auto', 'cpu' or 'cuda'" in capsys.readouterr().err


def test_champion_command_says_when_there_is_none(tmp_path, monkeypatch, capsys):
    (tmp_path / "settings.ini").write_text("")
    monkeypatch.setenv("MLOPS_NB_ROOT", str(tmp_path))
    for key in ("MLOPS_NB_TRACKING_URI", "MLOPS_NB_TRACKING_ARTIFACT_ROOT"):
        monkeypatch.delenv(key, raising=False)
    assert main(["champion"]) == 1
    assert "no champion yet" in capsys.readouterr().err
    assert (tmp_path / "mlruns.db").is_file()
