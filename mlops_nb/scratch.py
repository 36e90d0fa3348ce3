"""Hand runs: a notebook run outside a build reads the build's products and writes to a scratch area."""

# The scratch area holds the hand run's products, a copy of the build's MLflow tracking store (so a hand run can
# resume the build's runs and see its registry), its own BentoML home and prediction log. The build's products,
# tracking store and bento store are never written. A newer build resets the scratch area: it then starts again
# from a fresh copy of what the build left.

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from mlops_nb.settings import ENV_PREFIX, Settings
from mlops_nb.tracking import copy_sqlite, relocate_artifacts

__all__ = ["Scratch", "open_scratch", "build_environ"]

SQLITE = "sqlite:///"


@dataclass(frozen=True)
class Scratch:
    """Where a hand run writes: `root` mirrors the build's products folder and stores."""

    root: Path
    build_products: Path

    @property
    def products(self) -> Path:
        return self.root / "products"

    @property
    def tracking_db(self) -> Path:
        return self.root / "mlruns.db"

    @property
    def artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def bentoml_home(self) -> Path:
        return self.root / "bentoml"

    @property
    def prediction_log(self) -> Path:
        return self.root / "logs" / "predictions.jsonl"

    def product(self, build_path: Path | str) -> Path:
        """Where a hand run writes the product the build keeps at `build_path`."""
        return self.products / Path(build_path).resolve().relative_to(self.build_products.resolve())

    def upstream(self, build_path: Path | str) -> Path:
        """What a hand run reads: its own earlier product when there is one, else the build's."""
        mine = self.product(build_path)
        return mine if mine.exists() else Path(build_path)

    def environment(self) -> dict[str, str]:
        """Settings overrides and variables that point MLflow, BentoML and the prediction log at the scratch."""
        return {f"{ENV_PREFIX}TRACKING_URI": SQLITE + str(self.tracking_db),
                f"{ENV_PREFIX}TRACKING_ARTIFACT_ROOT": str(self.artifacts),
                f"{ENV_PREFIX}MONITORING_PREDICTION_LOG": str(self.prediction_log),
                "BENTOML_HOME": str(self.bentoml_home)}


_BUILD_ENVIRON: dict[str, str | None] = {}  # what open_scratch replaced in os.environ


def build_environ() -> dict[str, str]:
    """os.environ as it was before a scratch area took this process over (what the build's settings see)."""
    environ = dict(os.environ)
    for key, value in _BUILD_ENVIRON.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return environ


def _build_store(settings: Settings) -> Path | None:
    uri = settings.tracking_uri
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def _fingerprint(path: Path | None) -> str:
    if path is None or not path.exists():
        return "none"
    stat = path.stat()
    return f"{stat.st_mtime_ns}:{stat.st_size}"


def _copy_store(db: Path, artifacts: Path, scratch: Scratch) -> None:
    """Copy an MLflow sqlite store and its artifacts, pointing the copy's artifact locations at the copy."""
    copy_sqlite(db, scratch.tracking_db)
    relocate_artifacts(scratch.tracking_db, artifacts.resolve(), scratch.artifacts.resolve())
    if artifacts.is_dir():
        shutil.copytree(artifacts, scratch.artifacts)


def open_scratch(settings: Settings) -> Scratch:
    """The scratch area for `settings`' project, reset when a build changed the tracking store since it was made;
    this process's MLflow, BentoML and prediction-log settings point at it from now on."""
    scratch = Scratch(settings.path(settings.paths.scratch), settings.products_dir)
    store = _build_store(settings)
    state_file = scratch.root / "state.json"
    state = {"build_store": str(store), "fingerprint": _fingerprint(store)}
    if not state_file.is_file() or json.loads(state_file.read_text()) != state:
        shutil.rmtree(scratch.root, ignore_errors=True)
        scratch.root.mkdir(parents=True)
        if store is not None and store.exists():
            _copy_store(store, settings.path(settings.tracking.artifact_root), scratch)
        state_file.write_text(json.dumps(state))
    overrides = scratch.environment()
    for key in overrides:
        _BUILD_ENVIRON.setdefault(key, os.environ.get(key))
    os.environ.update(overrides)
    _forget_artifact_locations()
    return scratch


def _forget_artifact_locations() -> None:
    """MLflow caches each run's artifact location per process: runs this process resolved against the build's
    store must be looked up again, in the scratch store, or their artifacts would go to the build's folder."""
    if "mlflow" in sys.modules:
        from mlflow.tracking._tracking_service import utils

        getattr(utils, "_artifact_repos_cache", {}).clear()
