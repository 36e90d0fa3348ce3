"""The promotion ledger against a real MLflow registry: promote, rollback, history, tamper evidence, two writers."""

import json
import os
import subprocess
import sys

from conftest import register

from mlops_nb.cli import main
from mlops_nb.ledger import entries, verify
from mlops_nb.registry import CHALLENGER, CHAMPION, champion
from mlops_nb.tracking import connect


def cli(settings, monkeypatch, capsys, *args):
    """`mlops-nb ARGS` in-process on the fixture's project (settings.ini only: no overrides from the environment)."""
    for name in [n for n in os.environ if n.startswith("MLOPS_NB_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLOPS_NB_ROOT", str(settings.root))
    code = main(list(args))
    return code, capsys.readouterr()


def test_every_alias_move_is_a_ledger_entry_and_promote_rollback_follow_the_gates(registry, monkeypatch, capsys):
    settings, onnx_path = registry
    monkeypatch.setenv("LEDGER_ACTOR", "ci-bot")
    v1, _ = register(settings, onnx_path, 0.95)
    v2, gates = register(settings, onnx_path, 0.91)  # passes the floor, regresses by 0.04 > 0.01
    v1, v2 = str(v1), str(v2)
    assert not gates.passed and str(champion("gate-test", settings).version) == v1
    assert [(e.alias, e.from_version, e.to_version) for e in entries("gate-test", settings)] == [
        (CHALLENGER, None, v1), (CHAMPION, None, v1), (CHALLENGER, v1, v2)]

    code, out = cli(settings, monkeypatch, capsys, "promote", v2, "--reason", "try it")
    assert code == 1, out.err
    assert "FAIL test accuracy 0.9100 < champion 0.9500 - max_regression 0.01" in out.out
    assert "not promoted" in out.out and str(champion("gate-test", settings).version) == v1

    code, out = cli(settings, monkeypatch, capsys, "promote", v2, "--reason", "the new data needs it", "--force",
                    "--json")
    promoted = json.loads(out.out)
    assert code == 0 and promoted["promoted"] and promoted["entry"]["forced"] is True
    assert promoted["entry"]["actor"] == "ci-bot" and promoted["entry"]["from_version"] == v1
    assert promoted["entry"]["gates"]["passed"] is False and str(champion("gate-test", settings).version) == v2

    code, out = cli(settings, monkeypatch, capsys, "rollback", "--reason", "complaints")
    assert code == 0 and f"champion {v2} -> {v1}" in out.out and "rollback: complaints" in out.out
    assert str(champion("gate-test", settings).version) == v1

    code, out = cli(settings, monkeypatch, capsys, "history", "--verify")
    assert code == 0 and out.out.count("\n#") == 4 and "chain verified: 5 entries" in out.out
    code, out = cli(settings, monkeypatch, capsys, "status")
    assert code == 0 and f"champion    v{v1}" in out.out and f"challenger  v{v2}" in out.out

    code, out = cli(settings, monkeypatch, capsys, "promote", v1, "--reason", "again")
    assert code == 2 and "is already the champion" in out.err
    code, out = cli(settings, monkeypatch, capsys, "promote", "99", "--reason", "typo")
    assert code == 2 and "gate-test has no version 99" in out.err


def test_an_edited_or_removed_entry_breaks_the_chain(registry):
    settings, onnx_path = registry
    register(settings, onnx_path, 0.95)
    register(settings, onnx_path, 0.96)
    assert verify("gate-test", settings) == []
    client = connect(settings)
    third = client.get_model_version("gate-test-ledger", "3")
    entry = json.loads(third.tags["mlops_nb.entry"])
    client.set_model_version_tag("gate-test-ledger", "3", "mlops_nb.entry", json.dumps({**entry, "reason": "nicer"}))
    assert verify("gate-test", settings) == ["entry 3 was changed after it was written (its hash does not match)"]
    client.delete_model_version("gate-test-ledger", "2")
    assert "entry 3 is at position 2: an entry was removed or reordered" in verify("gate-test", settings)


WRITER = """
import sys
from mlops_nb.ledger import append
from mlops_nb.settings import load_settings
settings = load_settings(sys.argv[1], environ={})
for i in range(10):
    append("gate-test", alias="champion", to_version=sys.argv[2], reason=f"writer {sys.argv[2]} #{i}",
           settings=settings)
"""


def test_two_processes_promoting_at_once_lose_no_entry(registry):
    settings, onnx_path = registry
    v1, v2 = (str(register(settings, onnx_path, accuracy)[0]) for accuracy in (0.95, 0.96))
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(settings.root), version], stderr=subprocess.PIPE,
                                text=True) for version in (v1, v2)]
    outcomes = [(w.wait(timeout=300), w.stderr.read()[-2000:]) for w in writers]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    ledger = entries("gate-test", settings)
    assert len(ledger) == 4 + 20 and verify("gate-test", settings) == []
    assert sorted(e.reason for e in ledger[4:]) == sorted(f"writer {v} #{i}" for v in (v1, v2) for i in range(10))
    assert str(champion("gate-test", settings).version) == ledger[-1].to_version
