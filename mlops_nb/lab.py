"""JupyterLab for this project: started with the project's own Jupyter configuration (.jupyter/)."""

# The project configuration turns off ploomber's Jupyter server extension (0.23.3 breaks the contents API, so
# JupyterLab opens no notebook) and ploomber-extension (its "Share Notebook" button uploads to Ploomber Cloud),
# and cleans notebooks before every save (`mlops_nb.notebook_clean`).

from __future__ import annotations

import os
import sys
from pathlib import Path

from mlops_nb.pipeline import TELEMETRY_OFF

__all__ = ["CONFIG_DIR", "lab_environ", "lab_argv"]

CONFIG_DIR = ".jupyter"


def lab_environ(root: Path, environ=None) -> dict[str, str]:
    """The environment `jupyter lab` needs: the project's config folder first on JUPYTER_CONFIG_PATH."""
    environ = dict(os.environ if environ is None else environ)
    paths = [str(root / CONFIG_DIR), *filter(None, environ.get("JUPYTER_CONFIG_PATH", "").split(os.pathsep))]
    return {**environ, **TELEMETRY_OFF, "JUPYTER_CONFIG_PATH": os.pathsep.join(paths)}


def lab_argv(args: list[str]) -> list[str]:
    """`jupyter lab ARGS` from this Python's environment."""
    return [str(Path(sys.executable).parent / "jupyter"), "lab", *args]
