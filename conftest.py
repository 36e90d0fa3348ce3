"""Project-wide pytest hooks: they apply to the nbval notebook run (notebooks/) and to tests/ alike."""

import os
import tempfile
from pathlib import Path

from mlops_nb.notebook_outputs import isolated_environ


def pytest_configure(config):
    """Telemetry off; notebooks that nbval runs by hand get a throw-away project state, not the project's."""
    os.environ.update(isolated_environ(Path(tempfile.mkdtemp(prefix="mlops-nb-nbval-"))))


def pytest_collection_modifyitems(items):
    """nbdev-clean blanks execution counts, and nbval would take such cells as never run and refuse their
    outputs; a stored output is the reference to compare against, so mark those cells as run."""
    for item in items:
        cell = getattr(item, "cell", None)
        if cell is not None and cell.get("outputs") and cell.get("execution_count") is None:
            cell.execution_count = 1
