"""Project-wide pytest hooks: they apply to the notebook regression run (notebooks/) and to tests/ alike."""

import os
import tempfile
from pathlib import Path

from mlops_nb.notebook_outputs import isolated_environ


def pytest_configure(config):
    """Telemetry off; notebooks run by the regression run get a throw-away project state, not the project's."""
    os.environ.update(isolated_environ(Path(tempfile.mkdtemp(prefix="mlops-nb-nbval-"))))

