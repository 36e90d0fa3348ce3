"""Private prediction logs: rotation, redaction (drop, salted hash), `mlops-nb log erase` and `prune`, and drift on
redacted logs, on real files written by the real writer (several processes where the guarantee is about them)."""

import multiprocessing
import re
import subprocess
import time

import httpx
import numpy as np
import orjson
import pytest
from conftest import BIN, bento_tag, project_env

from mlops_nb.cli import main
from mlops_nb.drift import CLASSES, CONFIDENCE, Reference, monitor
from mlops_nb.log_admin import erase
from mlops_nb.monitoring import iter_prediction_log, log_files, log_lock, read_prediction_log
from mlops_nb.privacy import PrivacyError, redactor, salted_hash
from mlops_nb.serving.prediction_log import PredictionLogWriter
from mlops_nb.settings import MonitoringSettings, SettingsError, load_settings

SALT_ENV, SALT = "TEST_LOG_SALT", "pepper"
DAY = 86400
FORK = multiprocessing.get_context("fork")


def record(i, *, subject=None, t=None, role="champion", inputs=None):
    return {"schema_version": 1, "request_id": f"r{i}", "time": 1.7e9 + i if t is None else t, "model_name": "m",
            "model_version": "1", "role": role, "subject": subject,
            "inputs": [[0.123456, float(i)]] if inputs is None else inputs, "labels": [1], "confidence": [0.9],
            "latency_ms": 1.0}


def write(path, records, **options):
    """Write `records` with a writer of small batches (so rotation and erasure meet many batches), then close it."""
    writer = PredictionLogWriter(path, batch_size=5, linger_s=0.002, **options)
    for r in records:
        writer.put(r)
    writer.close()
    assert writer.dropped == 0


def ids(files):
    return [r["request_id"] for r in iter_prediction_log(files)]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder whose log hashes subjects with a salt from the environment; the CLI runs in it."""
    (tmp_path / "settings.ini").write_text(f"[monitoring]\nprediction_log = logs/p.jsonl\nhash_fields = subject\n"
                                           f"salt_env = {SALT_ENV}\nretention_days = 5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLOPS_NB_ROOT", str(tmp_path))  # in-process builds elsewhere in the session set it
    monkeypatch.setenv(SALT_ENV, SALT)
    return load_settings(tmp_path)


def cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_rotation_at_the_cap_keeps_max_files_and_the_newest_records(tmp_path):
    path = tmp_path / "p.jsonl"
    write(path, [record(i) for i in range(300)], max_bytes=2000, max_files=3)
    files = log_files(path)
    assert [f.name for f in files if f != path] == ["p.jsonl.3", "p.jsonl.2", "p.jsonl.1"]
    assert all(f.stat().st_size >= 2000 for f in files if f != path)
    kept = [int(i[1:]) for i in ids(files)]
    assert 0 < len(kept) < 300 and kept == list(range(300 - len(kept), 300))  # the oldest files went, whole


def test_two_writer_processes_share_a_rotating_log_without_losing_or_tearing_a_line(tmp_path):
    path = tmp_path / "p.jsonl"
    workers = [FORK.Process(target=write, args=(path, [record(i) for i in range(k * 1000, (k + 1) * 1000)]),
                            kwargs={"max_bytes": 3000, "max_files": 10_000}) for k in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert [w.exitcode for w in workers] == [0, 0]
    files = log_files(path)
    assert sorted(int(i[1:]) for i in ids(files)) == list(range(2000))  # a torn line would raise here
    # a writer that crossed the cap just after another rotates only if the new file crossed it too
    assert len(files) > 10 and all(f.stat().st_size >= 3000 for f in files[:-1])


def test_erase_while_a_writer_process_appends_loses_no_other_record(tmp_path, project):
    path = tmp_path / "p.jsonl"
    writer = FORK.Process(target=write, args=(path, [record(i) for i in range(1000)]),
                          kwargs={"max_bytes": 20_000, "max_files": 10_000})
    writer.start()
    erased = set()
    while writer.is_alive() or not erased:
        with log_lock(path, shared=True):
            present = [r["request_id"] for r in iter_prediction_log(log_files(path), {})]
        pick = [i for i in present[-3:] if i not in erased]
        counts = erase(project, path, pick)
        assert sum(removed for removed, _ in counts.values()) == len(pick)
        erased.update(pick)
    writer.join()
    left = ids(log_files(path))
    assert len(left) == len(set(left)) and set(left) == {f"r{i}" for i in range(1000)} - erased


def test_dropped_and_hashed_fields_never_reach_the_file(tmp_path, monkeypatch):
    path = tmp_path / "p.jsonl"
    m = MonitoringSettings(drop_fields=["inputs"], hash_fields=["subject"], salt_env=SALT_ENV)
    write(path, [record(i, subject="alice-123" if i % 2 else "bob-456") for i in range(20)],
          redact=redactor(m, {SALT_ENV: SALT}))
    raw = path.read_bytes()
    assert b"alice-123" not in raw and b"bob-456" not in raw and b"0.123456" not in raw
    logged = read_prediction_log(path)
    assert {r["subject"] for r in logged[1::2]} == {salted_hash("alice-123", SALT.encode())}  # same salt, same hash
    assert {r["subject"] for r in logged[::2]} == {salted_hash("bob-456", SALT.encode())}
    assert re.fullmatch("[0-9a-f]{64}", logged[0]["subject"]) and logged[0]["subject"] != logged[1]["subject"]
    assert salted_hash("alice-123", b"other salt") != logged[1]["subject"]
    assert all(r["inputs"] is None for r in logged) and [r["request_id"] for r in logged] == [f"r{i}" for i in
                                                                                             range(20)]
    hashed = tmp_path / "h.jsonl"
    write(hashed, [record(0), record(1), record(2, inputs=[[0.123456, 0.0]])],
          redact=redactor(MonitoringSettings(hash_fields=["inputs"], salt_env=SALT_ENV), {SALT_ENV: SALT}))
    assert b"0.123456" not in hashed.read_bytes()
    first, second, same_as_first = (r["inputs"] for r in read_prediction_log(hashed))
    assert re.fullmatch("[0-9a-f]{64}", first) and first != second and first == same_as_first


def test_a_missing_salt_is_refused_before_any_record_is_written(tmp_path, monkeypatch):
    (tmp_path / "settings.ini").write_text(f"[monitoring]\nhash_fields = subject\nsalt_env = {SALT_ENV}\n")
    monkeypatch.delenv(SALT_ENV, raising=False)
    with pytest.raises(PrivacyError, match=f"environment variable {SALT_ENV} .* is empty"):
        PredictionLogWriter.from_settings(load_settings(tmp_path, environ={}))  # what the service runs at start
    with pytest.raises(SettingsError, match="hash_fields needs salt_env"):
        load_settings(tmp_path, environ={"MLOPS_NB_MONITORING_SALT_ENV": ""})
    with pytest.raises(SettingsError, match="both in drop_fields and hash_fields"):
        load_settings(tmp_path, environ={"MLOPS_NB_MONITORING_DROP_FIELDS": "inputs,subject"})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLOPS_NB_ROOT", str(tmp_path))
    assert main(["log", "erase", "--subject", "alice"]) == 2  # the CLI says so too, without a traceback


def file_lines(out):
    return dict(re.findall(r"^(\S+): (removed \d+, kept \d+(?: \(file deleted\))?)$", out, re.M))


def test_erase_by_subject_and_by_request_id_across_rotated_files_with_counts(project, capsys):
    path = project.path(project.monitoring.prediction_log)
    alice = {f"r{i}" for i in range(0, 60, 10)}
    records = []
    for i in range(60):
        records.append(record(i, subject="alice" if f"r{i}" in alice else "bob"))
        if f"r{i}" in alice:  # its shadow record holds no subject, only the request id
            records.append(record(i, role="shadow", inputs=[]))
    write(path, records, redact=redactor(project.monitoring), max_bytes=3000)
    with open(path, "ab") as f:
        f.write(b'{"schema_version": 1, "request_id": "r50", "inputs": [[0.1')  # a torn line of hers
    files = log_files(path)
    assert len(files) >= 3
    expected = {str(f): sum(r["request_id"] in alice for r in iter_prediction_log([f], {})) for f in files}
    expected[str(path)] += 1  # the torn line
    before = {str(f): sum(1 for line in open(f, "rb") if line.strip()) for f in files}

    code, out, _ = cli(capsys, "log", "erase", "--subject", "alice")
    assert code == 0
    assert file_lines(out) == {f: f"removed {n}, kept {before[f] - n}" + (" (file deleted)" * (n == before[f]))
                               for f, n in expected.items()}
    assert f"removed {len(alice) * 2 + 1} record(s) in {len(files)} file(s)" in out
    left = list(iter_prediction_log(log_files(path)))
    assert not alice & {r["request_id"] for r in left} and len(left) == 60 - len(alice)
    assert {r["subject"] for r in left} == {salted_hash("bob", SALT.encode())}

    code, out, _ = cli(capsys, "log", "erase", "--request-id", "r7", "--request-id", "r8")
    changed = [n for n in file_lines(out).values() if not n.startswith("removed 0,")]
    assert code == 0 and changed and all(n.startswith(("removed 1,", "removed 2,")) for n in changed)
    assert "removed 2 record(s)" in out and {"r7", "r8"}.isdisjoint(ids(log_files(path)))
    assert "removed 0 record(s)" in cli(capsys, "log", "erase", "--subject", "alice")[1]
    code, _, err = cli(capsys, "log", "erase")
    assert code == 2 and "--request-id ID or --subject KEY" in err


def test_prune_removes_records_past_retention_and_whole_old_files(project, capsys, monkeypatch):
    path = project.path(project.monitoring.prediction_log)
    now = time.time()
    ages = [10 * DAY] * 40 + [3 * DAY] * 20 + [0] * 20
    write(path, [record(i, t=now - age) for i, age in enumerate(ages)], max_bytes=2500)
    files = log_files(path)
    monkeypatch.setenv("MLOPS_NB_MONITORING_RETENTION_DAYS", "0")
    assert "nothing to prune" in cli(capsys, "log", "prune")[2] and log_files(path) == files

    monkeypatch.setenv("MLOPS_NB_MONITORING_RETENTION_DAYS", "5")
    assert cli(capsys, "log", "prune", "--subject", "alice")[0] == 2 and log_files(path) == files
    code, out, _ = cli(capsys, "log", "prune")
    assert code == 0 and "removed 40 record(s)" in out
    assert sum(line.endswith("(file deleted)") for line in file_lines(out).values()) >= 2
    gone = [f for f in files if not f.exists()]
    assert gone and gone == files[:len(gone)]  # the oldest files, whole
    assert ids(log_files(path)) == [f"r{i}" for i in range(40, 80)]


def drift_reference():
    """Two features on [0, 1]; answers: classes 0/1/2 alike, confidence uniform on [0.85, 1]."""
    edges = np.tile(np.linspace(0, 1, 11), (2, 1))
    conf_edges = np.linspace(0, 1, 21)
    return Reference(["a", "b"], edges, np.full((2, 10), 100.0), {"0": 300, "1": 300, "2": 300}, conf_edges,
                     np.r_[np.zeros(17), [300, 300, 300]])


def redacted_log(path, labels, inputs_field):
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        for i, label in enumerate(labels):
            r = record(i, inputs=None) | {"labels": [str(label)], "confidence": [float(rng.uniform(0.85, 1.0))]}
            f.write(orjson.dumps({**r, "inputs": inputs_field}) + b"\n")
    return path


@pytest.mark.parametrize("inputs_field", [None, "9f" * 32], ids=["dropped", "hashed"])
def test_drift_judges_predictions_when_the_inputs_are_redacted(tmp_path, inputs_field):
    rng = np.random.default_rng(1)
    ref = drift_reference()

    def judge(labels):
        return monitor([redacted_log(tmp_path / "p.jsonl", labels, inputs_field)], lambda name, version: ref,
                       min_rows=200)

    clean = judge(rng.choice(3, 600))
    v = clean.versions[0]
    assert clean.status == "no drift" and v.features == [] and {c.name for c in v.prediction} == {CLASSES, CONFIDENCE}
    assert v.rows == v.redacted_rows == 600 and clean.window["redacted_rows"] == 600
    assert any("feature checks skipped: 600 of 600 rows were logged without their inputs" in r for r in clean.reasons)
    shifted = judge(np.r_[np.zeros(500, int), rng.choice(3, 100)])
    assert shifted.status == "drift" and shifted.reasons[0] == "v1: predicted classes drifted"
    blind = monitor([tmp_path / "p.jsonl"], lambda name, version: Reference(ref.features, ref.edges, ref.counts),
                    min_rows=200)
    assert blind.status == "cannot judge" and "holds no answers to compare" in blind.reasons[0]


@pytest.mark.engines
def test_a_served_subject_is_hashed_in_the_log_and_erased_while_serving(built_project, tmp_path):
    from mlops_nb.drift import check
    from mlops_nb.serving.bento import served

    log = tmp_path / "predictions.jsonl"
    overrides = {"MLOPS_NB_MONITORING_PREDICTION_LOG": str(log), "MLOPS_NB_MONITORING_HASH_FIELDS": "subject",
                 "MLOPS_NB_MONITORING_DROP_FIELDS": "inputs", "MLOPS_NB_MONITORING_SALT_ENV": SALT_ENV,
                 "MLOPS_NB_MONITORING_MAX_BYTES": "5000"}
    env = project_env(built_project, **overrides, **{SALT_ENV: SALT})
    settings = load_settings(built_project, environ=overrides)
    row = [0.0] * 64  # a digits image

    def send(subject, n):
        for _ in range(n):
            answer = httpx.post(f"{url}/predict", json={"instances": [row]}, headers={"x-subject": subject},
                                timeout=10)
            assert answer.status_code == 200

    def logged(n):
        for _ in range(200):  # the writer flushes off the request path
            if sum(1 for _ in iter_prediction_log(log_files(log), {})) >= n:
                return
            time.sleep(0.05)
        raise AssertionError(f"fewer than {n} records in {log}")

    def erase_alice():
        result = subprocess.run([str(BIN / "mlops-nb"), "log", "erase", "--subject", "alice"], cwd=built_project,
                                env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    with served(bento_tag(built_project), cwd=built_project, env=env, log=tmp_path / "serve.log") as url:
        send("alice", 15)
        send("bob", 15)
        traffic = subprocess.run([str(BIN / "mlops-nb"), "traffic", "--url", url, "--rows", "400"],
                                 cwd=built_project, env=env, capture_output=True, text=True, timeout=300)
        assert traffic.returncode == 0, traffic.stderr
        logged(30 + 400 // 16)
        assert b"alice" not in b"".join(f.read_bytes() for f in log_files(log))
        assert "removed 15 record(s)" in erase_alice()
        send("alice", 5)  # the writer reopens the file the erasure replaced
        logged(30 + 400 // 16 - 15 + 5)
        assert "removed 5 record(s)" in erase_alice()
    hashed = {r["subject"] for r in iter_prediction_log(log_files(log))}
    assert hashed == {salted_hash("bob", SALT.encode()), None} and len(log_files(log)) > 1
    verdict = check(settings, log_files(log))
    assert verdict.status in ("no drift", "drift") and verdict.versions[0].features == []
    assert verdict.window["redacted_rows"] == verdict.window["rows"] >= 400


@pytest.mark.engines
def test_a_service_refuses_to_start_without_the_salt(built_project, tmp_path):
    """Each worker refuses at start with the message (BentoML restarts it; the service never gets ready)."""
    import os
    import signal

    from mlops_nb.serving.bento import free_port

    env = project_env(built_project, MLOPS_NB_MONITORING_PREDICTION_LOG=str(tmp_path / "p.jsonl"),
                      MLOPS_NB_MONITORING_HASH_FIELDS="subject", MLOPS_NB_MONITORING_SALT_ENV=SALT_ENV)
    env.pop(SALT_ENV, None)
    port, log = free_port(), tmp_path / "serve.log"
    message = f"environment variable {SALT_ENV} ([monitoring] salt_env) is empty"
    with open(log, "w") as out:
        process = subprocess.Popen([str(BIN / "bentoml"), "serve", bento_tag(built_project), "--host", "127.0.0.1",
                                    "--port", str(port)], cwd=built_project, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(600):
            if message in log.read_text() or process.poll() is not None:
                break
            time.sleep(0.2)
        assert message in log.read_text()
        try:
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code
        except httpx.HTTPError:  # no worker answers
            ready = None
        assert ready != 200 and not (tmp_path / "p.jsonl").exists()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
