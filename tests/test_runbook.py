"""docs/runbook.md cannot rot: every alert has a section, and every `bash` block runs, in order, against a built and
served project (a renamed command or flag fails here)."""

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import project_env, run_build

from mlops_nb.alerts import ALERT_NAMES
from mlops_nb.serving.bento import served

RUNBOOK = Path(__file__).resolve().parents[1] / "docs" / "runbook.md"
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def test_every_alert_has_a_section_with_commands():
    text = RUNBOOK.read_text()
    sections = dict(re.findall(r"^## (\S+)\n(.*?)(?=^## |\Z)", text, re.S | re.M))
    missing = [name for name in ALERT_NAMES if name not in sections]
    assert not missing, f"alerts without a runbook section: {missing}"
    assert all(BLOCK.search(sections[name]) for name in ALERT_NAMES), "each alert's section has a bash block"


@pytest.mark.engines
def test_every_command_block_runs_against_a_served_project(built_project, tmp_path):
    root = built_project  # its champion moves here, as in other tests; the `server` fixture's build restores it
    run_build(root)
    run_build(root, "--force", "--partially", "register")  # a new champion: the rollback has a previous one
    (root / ".venv").unlink(missing_ok=True)
    (root / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)  # the runbook's `.venv/bin/...`
    env = project_env(root)
    with served("", cwd=root, env=env, log=tmp_path / "serve.log") as url:
        answer = httpx.post(f"{url}/predict", json={"instances": [[0.0] * 64]}, headers={"X-Subject": "customer-42"},
                            timeout=30)
        assert answer.status_code == 200, answer.text
        blocks = BLOCK.findall(RUNBOOK.read_text())
        assert len(blocks) >= 10
        for number, block in enumerate(blocks, 1):
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=root, timeout=900,
                                    env={**env, "SERVICE_URL": url}, capture_output=True, text=True)
            assert result.returncode == 0, f"runbook block {number} failed:\n{block}\n{result.stdout}\n{result.stderr}"
    (root / ".venv").unlink()
    assert (root.parent / "restored-project" / "settings.ini").is_file()
