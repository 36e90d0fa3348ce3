"""The notebooks' stored outputs: what nbval compares a fresh run with, and how they are refreshed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mlops_nb.pipeline import TELEMETRY_OFF
from mlops_nb.settings import ENV_PREFIX

__all__ = ["isolated_environ", "refresh_outputs"]


def isolated_environ(folder: Path) -> dict[str, str]:
    """Settings overrides that give notebooks run outside a build a throw-away project state under `folder`
    (no build, an empty tracking store), as the notebook regression run (nbval) uses."""
    return {**TELEMETRY_OFF,
            f"{ENV_PREFIX}PATHS_PRODUCTS": str(folder / "products"),
            f"{ENV_PREFIX}PATHS_SCRATCH": str(folder / "scratch"),
            f"{ENV_PREFIX}TRACKING_URI": f"sqlite:///{folder / 'mlruns.db'}",
            f"{ENV_PREFIX}TRACKING_ARTIFACT_ROOT": str(folder / "mlartifacts"),
            "BENTOML_HOME": str(folder / "bentoml")}


def refresh_outputs(paths: list[Path], *, timeout: int = 900) -> None:
    """Run the notebooks in order, in one fresh isolated state (as nbval will), and store their outputs cleaned
    (streams merged, as nbval merges them before comparing)."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    from mlops_nb.notebook_clean import clean_file

    with tempfile.TemporaryDirectory(prefix="mlops-nb-outputs-") as folder:
        environ = {**{k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)},
                   **isolated_environ(Path(folder))}
        for path in paths:
            notebook = nbformat.read(str(path), as_version=4)
            NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(Path(path).parent)}}).execute(env=environ)
            CoalesceStreamsPreprocessor().preprocess(notebook, {})  # one output per stream, however the kernel flushed
            nbformat.write(notebook, str(path))
            clean_file(path)
