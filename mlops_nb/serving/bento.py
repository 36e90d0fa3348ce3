"""Thin adapter around BentoML: import the registry's champion into the model store and build the bento."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import chdir, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlops_nb.contracts import CANARY_FOLDER, FALLBACK_FOLDER, PROFILE_FILE, SHADOW_FOLDER, ModelCard
from mlops_nb.registry import (CARD_FILE, CHALLENGER, CHAMPION, REFERENCE_PROFILE, RegistryError, champion,
                               fetch_version, previous_champion)
from mlops_nb.tracking import connect
from mlops_nb.settings import Settings, load_settings

__all__ = ["import_version", "deploy", "fallback_version", "build_bento", "bentoml_serve", "served", "Server",
           "free_port", "BUNDLED_FILES", "CARD", "DEPLOYED", "last_deployed"]

# file in the bento model <- file in the MLflow model folder
BUNDLED_FILES = {"model.onnx": "model.onnx", PROFILE_FILE: REFERENCE_PROFILE}
FRAMEWORK_SOURCE = Path(__file__).resolve().parents[2]  # the folder holding the mlops_nb package
CARD = CARD_FILE  # the same name in the bento model as in the registered version
logger = logging.getLogger("mlops_nb.deploy")
DEPLOYED = "deployed.json"  # in products/: what `mlops-nb deploy` built last (a notebook's deploy never writes it)


def last_deployed(products: Path) -> Path | None:
    """The record of what was deployed last: the build's bento task (bento/bento.json), or `mlops-nb deploy` after
    it (`DEPLOYED`); None when neither ran."""
    return max([p for p in (products / "bento/bento.json", products / DEPLOYED) if p.is_file()],
               key=lambda p: p.stat().st_mtime_ns, default=None)


def _bundle(folder: Path, card: ModelCard, dest: Path) -> None:
    """A fetched version's `BUNDLED_FILES` and its card, into a bento model's folder."""
    dest.mkdir(parents=True, exist_ok=True)
    for file, source in BUNDLED_FILES.items():
        shutil.copy2(folder / source, dest / file)
    (dest / CARD).write_text(card.model_dump_json(indent=2))


def _advice(role: str) -> str:
    return (f"a {role} must answer the same requests with the same labels. Register a compatible challenger, or set "
            f"[serving] {role}_fraction = 0")


# versions bundled beside the served one (DECISION 5): role -> (sub-folder, who it is, what to do when its contract
# differs)
BESIDE = {"shadow": (SHADOW_FOLDER, "the challenger", _advice("shadow")),
          "canary": (CANARY_FOLDER, "the challenger", _advice("canary")),
          "fallback": (FALLBACK_FOLDER, "the previous champion", "a fallback must answer the same requests with the "
                                                                 "same labels. Set [serving] fallback = error, or roll "
                                                                 "back first")}


def import_version(version: str = CHAMPION, settings: Settings | None = None, *, shadow: str | None = None,
                   canary: str | None = None, fallback: str | None = None):
    """Copy a registered version's (by default the champion's) ONNX file, model card and drift reference into the
    BentoML model store: the newest model there is what the service serves. `shadow` / `canary` / `fallback`: a
    version to bundle as the shadow or canary challenger or the fallback (in the model's `SHADOW_FOLDER`,
    `CANARY_FOLDER`, `FALLBACK_FOLDER`); its features, classes and input contract must match."""
    import bentoml

    settings = settings or load_settings()
    name = settings.registry.model_name
    beside = {role: str(v) for role, v in (("shadow", shadow), ("canary", canary), ("fallback", fallback)) if v}
    with tempfile.TemporaryDirectory() as tmp:
        folder, card = fetch_version(name, version, Path(tmp) / "model", settings)
        fetched = {role: fetch_version(name, v, Path(tmp) / role, settings) for role, v in beside.items()}
        for role, (_, other) in fetched.items():
            if differs := [f for f in ("input_contract", "features", "classes")
                           if getattr(card, f) != getattr(other, f)]:
                _, who, advice = BESIDE[role]
                raise RegistryError(f"{who} v{other.model_version} differs from v{card.model_version} in "
                                    f"{', '.join(differs)}: {advice}")
        labels = {"registry_version": card.model_version, **{f"{role}_version": v for role, v in beside.items()}}
        with bentoml.models.create(name, labels=labels, metadata=card.model_dump(mode="json")) as model:
            _bundle(folder, card, Path(model.path))
            for role, (other_folder, other) in fetched.items():
                _bundle(other_folder, other, Path(model.path) / BESIDE[role][0])
    return model


def challenger_version(served: str, fraction: float, settings: Settings) -> str | None:
    """The version to bundle as shadow or canary challenger for `served` (a number or `champion`): the registry's
    challenger when that role's `fraction` is above 0 and it is another version; else None."""
    if not fraction:
        return None
    name = settings.registry.model_name
    aliases = connect(settings).get_registered_model(name).aliases
    served = aliases.get(CHAMPION) if served == CHAMPION else str(served)
    return aliases[CHALLENGER] if aliases.get(CHALLENGER) not in (None, served) else None


def fallback_version(served: str, settings: Settings) -> str | None:
    """The version to bundle as fallback for `served` (a number or `champion`) when `[serving] fallback =
    previous_champion`: the previous champion (the version `mlops-nb rollback` would go to), when it is another
    version; else None, with a warning that failures will be answered 503 (fallback = error)."""
    if settings.serving.fallback != "previous_champion":
        return None
    name = settings.registry.model_name
    found = champion(name, settings) if served == CHAMPION else None
    served = str(found.version) if found else str(served)
    previous = previous_champion(name, settings)
    if previous in (None, served):
        logger.warning("[serving] fallback = previous_champion, but %s has no previous champion other than the served "
                       "version %s (`mlops-nb history`): the bento answers a failed model call with 503, as "
                       "fallback = error does", name, served)
        return None
    return previous


def deploy(version: str = CHAMPION, settings: Settings | None = None, *, gpu: bool = False):
    """Build the bento for a registered version (default: the champion), with the shadow or canary challenger and
    the fallback when they are configured: import, then build; returns both. The DAG's bento task calls this for the
    champion; after `mlops-nb rollback`, `mlops-nb deploy` serves the previous champion without retraining."""
    settings = settings or load_settings()
    serving = settings.serving
    model = import_version(version, settings, shadow=challenger_version(version, serving.shadow_fraction, settings),
                           canary=challenger_version(version, serving.canary_fraction, settings),
                           fallback=fallback_version(version, settings))
    return model, build_bento(settings, gpu=gpu)


GPU_CUDA_IMAGE = "12.8"  # the newest CUDA base image BentoML 1.4 offers; CUDA 13 libraries come as wheels


def gpu_runtime() -> str:
    """The gpu extra's ONNX Runtime requirement, from the framework's pyproject.toml (its one source)."""
    import tomllib

    extras = tomllib.loads((FRAMEWORK_SOURCE / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return extras["gpu"][0]


def bento_sources(root: Path) -> dict[str, Path]:
    """bentofile.yaml and the files its `include` patterns and its Dockerfile template pick, by their name in the
    bento: from the project, else from the framework's source (a project that `mlops-nb new` made has no mlops_nb/
    folder of its own)."""
    config = yaml.safe_load((root / "bentofile.yaml").read_text())
    found = {"bentofile.yaml": root / "bentofile.yaml"}
    for pattern in filter(None, [*config.get("include", []), config.get("docker", {}).get("dockerfile_template")]):
        for base in (root, FRAMEWORK_SOURCE):
            matches = [m for m in sorted(base.glob(pattern.lstrip("/"))) if m.is_file()]
            if matches:
                found.update({str(m.relative_to(base)): m for m in matches})
                break
    return found


def _template_fallback(record: logging.LogRecord) -> bool:
    """Drop BentoML's warning that a Dockerfile template selects its v1 bento format: intended (the health check)."""
    return not record.getMessage().startswith("docker.dockerfile_template is not supported by bento v2")


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
        config["docker"] = {**config.get("docker", {}), "distro": "debian", "cuda_version": GPU_CUDA_IMAGE}
        config["envs"] = [*config.get("envs", []), {"name": "MLOPS_NB_SERVING_DEVICE", "value": "cuda"},
                          {"name": "MLOPS_NB_SERVING_GPUS", "value": str(max(settings.serving.gpus, 1))}]
    with tempfile.TemporaryDirectory() as context:
        for name, path in bento_sources(settings.root).items():
            (Path(context) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, Path(context) / name)
        (Path(context) / "bentofile.yaml").write_text(yaml.safe_dump(config))
        build_log = logging.getLogger("bentoml.build")
        build_log.addFilter(_template_fallback)
        try:
            with chdir(context):  # BentoML reads the Dockerfile template relative to the working directory
                return bentoml.bentos.build_bentofile(str(Path(context) / "bentofile.yaml"), build_ctx=context)
        finally:
            build_log.removeFilter(_template_fallback)


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
