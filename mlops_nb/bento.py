"""Thin adapter around BentoML: import the registry's champion into the model store and build the bento."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from mlops_nb.products import file_sha256
from mlops_nb.registry import CHAMPION, download_version
from mlops_nb.settings import Settings, load_settings

__all__ = ["import_champion", "build_bento", "served", "free_port", "BUNDLED_FILES"]

# file in the bento model <- file in the MLflow model folder
BUNDLED_FILES = {"model.onnx": "model.onnx", "preprocessing.json": "extra_files/preprocessing.json",
                 "reference_profile.json": "extra_files/reference_profile.json"}


def import_champion(settings: Settings | None = None):
    """Copy the champion's ONNX file, preprocessing and drift reference into the BentoML model store."""
    import bentoml

    from mlops_nb.registry import champion

    settings = settings or load_settings()
    name = settings.registry.model_name
    version = champion(name, settings)
    if version is None:
        raise LookupError(f"registered model {name!r} has no {CHAMPION!r} alias yet: no version passed the gates")
    with tempfile.TemporaryDirectory() as tmp:
        folder = download_version(name, CHAMPION, Path(tmp) / "model", settings)
        expected = version.tags.get("mlops_nb.onnx_sha256")
        if expected and file_sha256(folder / "model.onnx") != expected:
            raise ValueError(f"{name} v{version.version}: registry file differs from the parity-checked ONNX file")
        metadata = {"model_name": name, "model_version": str(version.version), "run_id": version.run_id,
                    **{k.removeprefix("mlops_nb."): v for k, v in version.tags.items() if k.startswith("mlops_nb.")
                       and k in {f"mlops_nb.{t}" for t in ("data_sha256", "onnx_sha256", "weights_sha256",
                                                          "variant", "test_accuracy")}}}
        with bentoml.models.create(name, labels={"stage": CHAMPION, "registry_version": str(version.version)},
                                   metadata=metadata) as model:
            for file, source in BUNDLED_FILES.items():
                shutil.copy2(folder / source, model.path_of(file))
    return model


def build_bento(settings: Settings | None = None):
    """Build the bento described by bentofile.yaml (service, code, settings, the latest imported model)."""
    import bentoml

    settings = settings or load_settings()
    return bentoml.bentos.build_bentofile(str(settings.root / "bentofile.yaml"), build_ctx=str(settings.root))


@contextmanager
def served(target: str, *, cwd: Path | str, env: dict | None = None, port: int | None = None,
           log: Path | str | None = None, timeout_s: float = 180):
    """Run `bentoml serve TARGET` (a bento tag; "" = the project's bentofile) on 127.0.0.1 until ready; yield
    its base URL; stop it and its workers afterwards."""
    import httpx

    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    out = open(log, "w") if log else subprocess.DEVNULL
    command = [str(Path(sys.executable).parent / "bentoml"), "serve", *([target] if target else []),
               "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"`{' '.join(command)}` exited with {process.returncode}" +
                                   (f"; see {log}" if log else ""))
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready after {timeout_s}s")
            time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        if log:
            out.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
