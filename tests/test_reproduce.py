"""`mlops-nb reproduce` refuses, naming each reason, when what a rebuild needs is missing or differs (the rebuild
that matches is in the engines tier: tests/test_lifecycle.py)."""

import subprocess

from mlops_nb.reproduce import refusals
from mlops_nb.settings import load_settings
from mlops_nb.tracking import BUILD_SETTINGS_TAG, provenance


def test_each_missing_or_differing_input_is_a_reason(tmp_path):
    (tmp_path / "settings.ini").write_text("")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    settings = load_settings(tmp_path, environ={})
    tags = {**provenance(tmp_path), "mlops_nb.git_commit": "0" * 40, "mlops_nb.git_dirty": "true",
            "mlops_nb.data_sha256": "ab" * 32, "mlops_nb.version.torch": "0.0.1"}
    reasons = refusals(tags, settings)
    assert len(reasons) == 5, reasons
    assert "commit 000000000000 is not in this repository" in reasons[0]
    assert "uncommitted changes" in reasons[1]
    assert "no build settings" in reasons[2]
    assert f"snapshot {'ab' * 6} is gone from {tmp_path / 'products/snapshots'}" in reasons[3]
    assert reasons[4].startswith("torch was 0.0.1 at training")

    snapshot = tmp_path / "products/snapshots" / f"{'ab' * 32}.parquet"
    snapshot.parent.mkdir(parents=True)
    snapshot.write_bytes(b"")
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", "c"],
                   cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    clean = {**provenance(tmp_path), "mlops_nb.git_commit": head, "mlops_nb.git_dirty": "false",
             "mlops_nb.data_sha256": "ab" * 32, BUILD_SETTINGS_TAG: "{}"}
    assert refusals(clean, settings) == []
    assert "not trained from a checkout" in refusals({**clean, "mlops_nb.git_commit": "unknown"}, settings)[0]
