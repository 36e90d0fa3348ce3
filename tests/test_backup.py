"""`mlops-nb backup` and `restore`: a verified round trip, refused archives (corrupted, traversal, missing or extra
members) that leave the destination untouched, and a restored build that serves the same champion and answers."""

from __future__ import annotations

import gzip
import io
import json
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import httpx
import pytest

from conftest import BIN, bento_tag, make_registry, project_env, register
from mlops_nb.backup import EVIDENCE, BackupError, backup, restore, verify
from mlops_nb.cli import main
from mlops_nb.settings import load_settings
from mlops_nb.tracking import ARTIFACT_COLUMNS


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory):
    """A small project with one registered champion, backed up: (settings, archive)."""
    settings, onnx_path = make_registry(tmp_path_factory.mktemp("project"))
    register(settings, onnx_path, 0.95)
    archive = tmp_path_factory.mktemp("archives") / "backup.tar.gz"
    backup(settings, archive)
    return settings, archive


def rewritten(archive: Path, dest: Path, change) -> Path:
    """A copy of `archive` whose uncompressed tar bytes went through `change(bytes, members by name)`."""
    raw = bytearray(gzip.decompress(archive.read_bytes()))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tar:
        members = {m.name: m for m in tar.getmembers()}
    dest.write_bytes(gzip.compress(bytes(change(raw, members))))
    return dest


def appended(archive: Path, dest: Path, info: tarfile.TarInfo, data: bytes = b"") -> Path:
    """A copy of `archive` with one more member."""
    with tarfile.open(archive) as source, tarfile.open(dest, "w:gz") as out:
        for member in source.getmembers():
            out.addfile(member, source.extractfile(member))
        info.size = len(data) if info.isfile() else 0
        out.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return dest


def refused(archive: Path, dest: Path) -> str:
    """Restore `archive` into `dest`, expecting a refusal that leaves `dest` and its folder as they were."""
    before = sorted(dest.parent.iterdir())
    with pytest.raises(BackupError) as error:
        restore(archive, dest)
    assert not dest.exists() and sorted(dest.parent.iterdir()) == before
    return str(error.value)


def locations(db: Path) -> list[str]:
    """Every artifact location the MLflow store holds."""
    with sqlite3.connect(db) as store:
        return [row[0] for table, column in ARTIFACT_COLUMNS for row in store.execute(f"SELECT {column} FROM {table}")]


def test_round_trip_moves_the_registry_and_records_evidence(backed_up, tmp_path):
    from mlops_nb.registry import champion, download_version

    settings, archive = backed_up
    evidence = json.loads((settings.products_dir / EVIDENCE).read_text())
    assert evidence["archive"] == str(archive) and evidence["size"] == archive.stat().st_size
    assert evidence["verified"] and evidence["members"] == len(verify(archive)["members"]) > 3
    restore(archive, tmp_path / "restored")
    restored = load_settings(tmp_path / "restored", environ={})
    found = locations(tmp_path / "restored/mlruns.db")
    assert [place for place in found if str(settings.root) in place] == []
    assert sum(place.startswith(restored.root.as_uri() + "/mlartifacts/") for place in found) >= 3
    away = settings.root.rename(settings.root.with_name("away"))  # nothing may read the original now
    try:
        assert str(champion("gate-test", restored).version) == evidence["champion"] == "1"
        assert (download_version("gate-test", "1", tmp_path / "model", restored) / "model.onnx").is_file()
    finally:
        away.rename(settings.root)


def test_a_corrupted_member_is_refused_by_name(backed_up, tmp_path):
    _, archive = backed_up
    name = "project/mlruns.db"

    def flip(raw, members):
        raw[members[name].offset_data + 100] ^= 0xFF
        return raw

    message = refused(rewritten(archive, tmp_path / "bad.tar.gz", flip), tmp_path / "dest")
    assert f"member {name}: its size or SHA-256 differs from the manifest" in message


def test_a_missing_member_is_refused_by_name(backed_up, tmp_path):
    _, archive = backed_up
    with tarfile.open(archive) as source, tarfile.open(tmp_path / "short.tar.gz", "w:gz") as out:
        for member in source.getmembers():
            if member.name != "project/settings.ini":
                out.addfile(member, source.extractfile(member))
    message = refused(tmp_path / "short.tar.gz", tmp_path / "dest")
    assert "member project/settings.ini: in the manifest, missing from the archive" in message


@pytest.mark.parametrize("name, kind, expected", [
    ("project/extra.txt", tarfile.REGTYPE, "member project/extra.txt: not in the manifest (an extra member)"),
    ("project/../../evil.txt", tarfile.REGTYPE, "member 'project/../../evil.txt': refused"),
    ("/tmp/evil.txt", tarfile.REGTYPE, "member '/tmp/evil.txt': refused"),
    ("project/link", tarfile.SYMTYPE, "member 'project/link': refused"),
    ("evil.txt", tarfile.REGTYPE, "member 'evil.txt': refused"),
])
def test_extra_and_escaping_members_are_refused(backed_up, tmp_path, name, kind, expected):
    _, archive = backed_up
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, "/etc/passwd"
    (tmp_path / "a").mkdir()
    message = refused(appended(archive, tmp_path / "bad.tar.gz", info, b"x"), tmp_path / "a" / "dest")
    assert expected in message
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_a_truncated_archive_is_refused(backed_up, tmp_path):
    _, archive = backed_up
    (tmp_path / "cut.tar.gz").write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert "the archive is corrupted at member project/" in refused(tmp_path / "cut.tar.gz", tmp_path / "dest")


def test_the_cli_refuses_a_folder_that_is_not_empty(backed_up, tmp_path, capsys):
    _, archive = backed_up
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest/keep.txt").write_text("mine")
    assert main(["restore", str(archive), str(tmp_path / "dest")]) == 2
    assert f"{tmp_path / 'dest'} is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "dest").iterdir()] == ["keep.txt"]


def test_a_tracking_server_is_refused_saying_what_to_back_up(tmp_path, monkeypatch, capsys):
    (tmp_path / "settings.ini").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLOPS_NB_ROOT", str(tmp_path))
    monkeypatch.setenv("MLOPS_NB_TRACKING_URI", "http://127.0.0.1:5000")
    assert main(["backup", str(tmp_path / "b.tar.gz")]) == 2
    assert "is a tracking server: back up its backend store" in capsys.readouterr().err
    assert not (tmp_path / "b.tar.gz").exists()


def mlops_nb(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`mlops-nb ARGS` in the project at `root`, with its own stores."""
    done = subprocess.run([str(BIN / "mlops-nb"), *args], cwd=root, env=project_env(root), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def answers(root: Path, rows: list, log: Path) -> list:
    """What the bento the build at `root` made answers for `rows` (all but the request id), served from `root`'s
    BentoML home."""
    from mlops_nb.serving.bento import served

    env = project_env(root, MLOPS_NB_MONITORING_PREDICTION_LOG=str(log))
    with served(bento_tag(root), cwd=root, env=env, log=log.with_suffix(".log")) as url:
        answer = httpx.post(f"{url}/predict", json={"instances": rows}, timeout=60)
    assert answer.status_code == 200, answer.text
    return {key: value for key, value in answer.json().items() if key != "request_id"}


@pytest.mark.engines
def test_a_restored_build_serves_the_same_champion_and_answers(built_project, tmp_path):
    from mlops_nb.traffic import held_out_split

    evidence = built_project / "products" / EVIDENCE
    had_evidence = evidence.exists()
    rows = held_out_split(load_settings(built_project, environ={}))[0].tolist()
    before = answers(built_project, rows, tmp_path / "original.jsonl")
    champion = str(json.loads(mlops_nb(built_project, "champion").stdout)["version"])
    try:
        mlops_nb(built_project, "backup", str(tmp_path / "backup.tar.gz"))
        restored = tmp_path / "restored"
        done = subprocess.run([str(BIN / "mlops-nb"), "restore", str(tmp_path / "backup.tar.gz"), str(restored)],
                              cwd=tmp_path, env=project_env(built_project, BENTOML_HOME=str(restored / ".bentoml")),
                              capture_output=True, text=True, timeout=600)  # its framework: the project's
        assert done.returncode == 0, done.stdout + done.stderr
        print(done.stdout)
        away = built_project.rename(built_project.with_name(built_project.name + "-away"))
        try:
            assert str(json.loads(mlops_nb(restored, "champion").stdout)["version"]) == champion
            status = json.loads(mlops_nb(restored, "status", "--json").stdout)
            assert status["champion"]["model_version"] == champion
            assert status["serving"]["bento_tag"] == bento_tag(restored)
            assert held_out_split(load_settings(restored, environ={}))[0].tolist() == rows
            after = answers(restored, rows, tmp_path / "restored.jsonl")
        finally:
            away.rename(built_project)
    finally:
        if not had_evidence:
            evidence.unlink(missing_ok=True)
    assert after == before and len(after["predictions"]) == len(rows) > 100
    assert {r["model_version"] for r in map(json.loads, open(tmp_path / "restored.jsonl"))} == {champion}
    pointing_back = [f for f in restored.rglob("*") if f.is_file() and f.suffix != ".ipynb" and ".bentoml" not in
                     f.parts and str(built_project).encode() in f.read_bytes()]  # executed notebooks show paths
    assert pointing_back == []
    assert not list(tmp_path.glob(".restored.restoring-*"))
