"""Thin adapter around BentoML: import the registry's champion into the model store and build the bento."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlops_nb.contracts import ModelCard
from mlops_nb.products import file_sha256
from mlops_nb.registry import CARD_FILE, CHAMPION, download_version
from mlops_nb.settings import Settings, load_settings

__all__ = ["import_version", "deploy", "build_bento", "bentoml_serve", "served", "Server", "free_port", "BUNDLED_FILES",
           "CARD"]

# file in the bento model <- file in the MLflow model folder
BUNDLED_FILES = {"model.onnx": "model.onnx", "reference_profile.json": "extra_files/reference_profile.json"}
FRAMEWORK_SOURCE = Path(__file__).resolve().parents[2]  # the folder holding the mlops_nb package
CARD = CARD_FILE  # the same name in the bento model as in the registered version


def import_version(version: str = CHAMPION, settings: Settings | None = None):
    """Copy a registered version's (by default the champion's) ONNX file, model card and drift reference into the
    BentoML model store: the newest model there is what the service serves."""
    import bentoml

    from mlops_nb.registry import champion

    settings = settings or load_settings()
    name = settings.registry.model_name
    if version == CHAMPION:
        found = champion(name, settings)
        if found is None:
            raise LookupError(f"registered model {name!r} has no {CHAMPION!r} alias yet: no version passed the gates")
        version = str(found.version)
    with tempfile.TemporaryDirectory() as tmp:
        folder = download_version(name, str(version), Path(tmp) / "model", settings)
        card = ModelCard.model_validate({**json.loads((folder / "extra_files" / CARD).read_text()),
                                         "model_version": str(version)})
        if file_sha256(folder / "model.onnx") != card.onnx_sha256:
            raise ValueError(f"{name} v{version}: registry file differs from the parity-checked ONNX file")
        with bentoml.models.create(name, labels={"registry_version": str(version)},
                                   metadata=card.model_dump(mode="json")) as model:
            for file, source in BUNDLED_FILES.items():
                shutil.copy2(folder / source, model.path_of(file))
            Path(model.path_of(CARD)).write_text(card.model_dump_json(indent=2))
    return model


def deploy(version: str = CHAMPION, settings: Settings | None = None, *, gpu: bool = False):
    """Build the bento for a registered version (default: the champion): import it, then build; returns both.
    The DAG's bento task calls this for the champion; after `mlops-nb rollback`, `mlops-nb deploy` serves the
    previous champion without retraining."""
    model = import_version(version, settings)
    return model, build_bento(settings, gpu=gpu)


GPU_CUDA_IMAGE = "12.8"  # the newest CUDA base image BentoML 1.4 offers; CUDA 13 libraries come as wheels


def gpu_runtime() -> str:
    """The gpu extra's ONNX Runtime requirement, from the framework's pyproject.toml (its one source)."""
    import tomllib

    extras = tomllib.loads((FRAMEWORK_SOURCE / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return extras["gpu"][0]


def bento_sources(root: Path) -> dict[str, Path]:
    """bentofile.yaml and the files its `include` patterns pick, by their name in the bento: from the project, else
    from the framework's source (a project that `mlops-nb new` made has no mlops_nb/ folder of its own)."""
    config = yaml.safe_load((root / "bentofile.yaml").read_text())
    found = {"bentofile.yaml": root / "bentofile.yaml"}
    for pattern in config.get("include", []):
        for base in (root, FRAMEWORK_SOURCE):
            matches = [m for m in sorted(base.glob(pattern.lstrip("/"))) if m.is_file()]
            if matches:
                found.update({str(m.relative_to(base)): m for m in matches})
                break
    return found


def build_bento(settings: Settings | None = None, *, gpu: bool = False):
    """Build the bento described by bentofile.yaml (service, code, settings, the latest imported model), from a
    build folder holding exactly `bento_sources`.

    `gpu`: the same bento with the CUDA runtime instead of the CPU one, a CUDA base image for its container,
    and `device = cuda` (start-up fails when CUDA is not the active provider), named `<service>-gpu`.
    """
    import bentoml

    settings = settings or load_settings()
    config = yaml.safe_load((settings.root / "bentofile.yaml").read_text())
    config["name"] = settings.serving.service_name + ("-gpu" if gpu else "")
    if gpu:
        packages = config["python"]["packages"]
        packages[:] = [gpu_runtime() if p.startswith("onnxruntime==") else p for p in packages]
        config["labels"] = {**config.get("labels", {}), "runtime": "cuda"}
        config["docker"] = {"distro": "debian", "cuda_version": GPU_CUDA_IMAGE}
        config["envs"] = [*config.get("envs", []), {"name": "MLOPS_NB_SERVING_DEVICE", "value": "cuda"},
                          {"name": "MLOPS_NB_SERVING_GPUS", "value": str(max(settings.serving.gpus, 1))}]
    with tempfile.TemporaryDirectory() as context:
        for name, path in bento_sources(settings.root).items():
            (Path(context) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, Path(context) / name)
        (Path(context) / "bentofile.yaml").write_text(yaml.safe_dump(config))
        return bentoml.bentos.build_bentofile(str(Path(context) / "bentofile.yaml"), build_ctx=context)


@dataclass(frozen=True)
class Server:
    """A running `bentoml serve`: its base URL and its process (the leader of its own process group)."""

    url: str
    process: subprocess.Popen


@contextmanager
def bentoml_serve(target: str, *, cwd: Path | str, env: dict | None = None, port: int | None = None,
                  log: Path | str | None = None, timeout_s: float = 180):
    """Run `bentoml serve TARGET` (a bento tag; "" = the project's bentofile) on 127.0.0.1 until ready; yield a
    `Server`; stop it and its workers afterwards (SIGTERM to the process group, unless it already exited)."""
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
            time.sleep(0.2)
        yield Server(url, process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        if log:
            out.close()


@contextmanager
def served(target: str, **options):
    """`bentoml_serve` yielding just the base URL."""
    with bentoml_serve(target, **options) as server:
        yield server.url


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
