"""The one typed loader for `settings.ini`: validated at load, overridable by environment variables."""

from __future__ import annotations

import configparser
import os
from itertools import product
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

__all__ = ["Settings", "SettingsError", "load_settings", "find_project_root", "ENV_PREFIX"]

ENV_PREFIX = "MLOPS_NB_"
SETTINGS_FILE = "settings.ini"
SECRET = "secret_in_value"  # an error whose input is never echoed


class SettingsError(ValueError):
    """A setting is missing, unknown or has a value outside what is allowed."""


class _Section(BaseModel):
    """A settings section; a mapping too, so a notebook can pass one on as keyword arguments (`f(**section)`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def keys(self):
        return type(self).model_fields.keys()

    def __getitem__(self, key: str):
        return getattr(self, key)


class DataSettings(_Section):
    source: str = "digits"
    target: str = Field("target", min_length=1)
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)


class ValidationSettings(_Section):
    min_class_fraction: float = Field(0.05, ge=0, lt=1)
    max_missing_fraction: float = Field(0.05, ge=0, lt=1)
    duplicate_rows: Literal["error", "warn"] = "error"
    target_leak: Literal["error", "warn"] = "error"
    max_single_feature_score: float = Field(0.98, gt=0, le=1)


class TrainingSettings(_Section):
    seed: int = Field(42, ge=0)
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(0.002, gt=0, le=1)
    weight_decay: float = Field(0.0001, ge=0)
    hidden_sizes: tuple[int, ...] = (256, 128)
    dropout: float = Field(0.2, ge=0, lt=1)
    torch_threads: int = Field(1, ge=1)

    @field_validator("hidden_sizes", mode="before")
    @classmethod
    def _split_sizes(cls, value):
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
                raise ValueError("expected comma-separated positive integers, e.g. 128,64")
            return tuple(int(p) for p in parts)
        return value


class SearchSettings(_Section):
    """Values to try for [training] keys, `|`-separated; the candidates are their product, on top of [training]."""

    hidden_sizes: tuple[tuple[int, ...], ...] = ()
    dropout: tuple[float, ...] = ()
    learning_rate: tuple[float, ...] = ()
    weight_decay: tuple[float, ...] = ()
    epochs: tuple[int, ...] = ()
    batch_size: tuple[int, ...] = ()

    @field_validator("*", mode="before")
    @classmethod
    def _split_values(cls, value, info):
        if not isinstance(value, str):
            return value
        values = [v.strip() for v in value.split("|") if v.strip()]
        if info.field_name == "hidden_sizes":
            return tuple(TrainingSettings._split_sizes(v) for v in values)
        return tuple(values)

    def candidates(self, training: TrainingSettings) -> list[TrainingSettings]:
        """Every combination of the values given, each applied to `training`; just `training` when none is given."""
        axes = {key: values for key, values in self if values}
        return [TrainingSettings.model_validate({**training.model_dump(), **dict(zip(axes, combo))})
                for combo in product(*axes.values())]


class EvaluationSettings(_Section):
    slice_columns: tuple[str, ...] = ()
    slice_bins: int = Field(4, ge=2, le=20)
    min_slice_rows: int = Field(10, ge=1)

    @field_validator("slice_columns", mode="before")
    @classmethod
    def _split_columns(cls, value):
        return tuple(p.strip() for p in value.split(",") if p.strip()) if isinstance(value, str) else value


class PathsSettings(_Section):
    products: Path = Path("products")
    scratch: Path = Path("scratch")


def _refuse_credentials(parts, where_they_go: str) -> None:
    """A URI holding a user or password is refused, with an error that never echoes it."""
    if parts.username or parts.password:
        raise PydanticCustomError(SECRET, f"no credentials in the URI: {where_they_go}")


class TrackingSettings(_Section):
    uri: str = "sqlite:///mlruns.db"
    artifact_root: Path = Path("mlartifacts")
    experiment: str = Field("digits", min_length=1)

    @field_validator("uri")
    @classmethod
    def _a_store_without_secrets(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("sqlite", "http", "https") or not (parts.path if parts.scheme == "sqlite"
                                                                     else parts.hostname):
            raise ValueError(f"{value!r}: expected sqlite:///PATH (a local store) or http(s)://HOST[:PORT] (an "
                             "`mlflow server`)")
        _refuse_credentials(parts, "MLflow reads them from MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
                            "MLFLOW_TRACKING_TOKEN)")
        return value

    @property
    def remote(self) -> bool:
        """A tracking server: it stores the artifacts (`mlflow server --serve-artifacts`), not `artifact_root`."""
        return not self.uri.startswith("sqlite:")


class RegistrySettings(_Section):
    model_name: str = Field("digits-classifier", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class GatesSettings(_Section):
    metric: Literal["accuracy", "balanced_accuracy", "macro_f1", "roc_auc"] = "accuracy"
    min_score: float = Field(0.95, ge=0, le=1, validation_alias=AliasChoices("min_score", "min_accuracy"))
    max_regression: float = Field(0.005, ge=0, le=1)
    min_lift: float = Field(0.005, ge=0, le=1)
    min_robust_accuracy: float = Field(0.0, ge=0, le=1)


COMPRESSION = ("int8", "pruned", "distilled", "fp16")  # the export step's candidates beside fp32


class ExportSettings(_Section):
    opset: int = Field(18, ge=13, le=23)
    parity_tolerance: float = Field(1e-4, gt=0)
    candidates: tuple[Literal[COMPRESSION], ...] = ("int8", "pruned", "distilled")
    max_accuracy_drop: float = Field(0.002, ge=0, le=1,
                                     validation_alias=AliasChoices("max_accuracy_drop", "int8_max_accuracy_drop"))
    fp16_parity_tolerance: float = Field(0.005, gt=0)
    prune_fraction: float = Field(0.5, gt=0, lt=1)
    prune_epochs: int = Field(5, ge=0)
    student_hidden_sizes: tuple[int, ...] = (64,)
    distill_epochs: int = Field(40, ge=1)
    distill_temperature: float = Field(4.0, gt=0)
    distill_alpha: float = Field(0.7, ge=0, le=1)
    serve: str = "smallest"

    _split_sizes = field_validator("student_hidden_sizes", mode="before")(TrainingSettings._split_sizes.__func__)

    @field_validator("candidates", mode="before")
    @classmethod
    def _split_names(cls, value):
        return tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _serve_names_a_policy_or_a_candidate(self):
        if self.serve not in ("fp32", "smallest", *self.candidates):
            raise ValueError(f"serve = {self.serve!r}: expected fp32, smallest, or one of candidates "
                             f"{list(self.candidates)}")
        return self


def _not_a_settings_variable(value: str) -> str:
    """A setting naming an environment variable that holds a secret: never one the settings loader reads."""
    if value.startswith(ENV_PREFIX):
        raise ValueError(f"name a variable that does not start with {ENV_PREFIX} (that prefix overrides "
                         "settings, and a secret is never a setting), e.g. SERVING_API_KEY or REDIS_URL")
    return value


class ServingSettings(_Section):
    service_name: str = Field("digits_service", pattern=r"^[a-z][a-z0-9_]*$")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus: int = Field(0, ge=0)
    max_rows_per_request: int = Field(1024, ge=1)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_in_flight: int = Field(1024, ge=1)
    batching: Literal["off", "adaptive"] = "off"
    max_batch_size: int = Field(256, ge=1)
    max_latency_ms: float = Field(2, gt=0)
    api_key_env: str = Field("", pattern=r"^([A-Z_][A-Z0-9_]*)?$")
    workers: int = Field(1, ge=1)
    timeout_s: int = Field(30, ge=1)
    shadow_fraction: float = Field(0.0, ge=0, le=1)
    fallback: Literal["error", "previous_champion"] = "error"
    fallback_budget_ms: float = Field(0, ge=0)
    canary_fraction: float = Field(0.0, ge=0, le=1)
    canary_alpha: float = Field(0.05, gt=0, lt=1)
    canary_max_excess_failure_rate: float = Field(0.01, ge=0, le=1)
    canary_min_requests: int = Field(200, ge=1)

    _not_a_settings_variable = field_validator("api_key_env")(_not_a_settings_variable)

    @model_validator(mode="after")
    def _one_challenger_role(self):
        if self.shadow_fraction and self.canary_fraction:
            raise ValueError("[serving] shadow_fraction and canary_fraction are both above 0: the challenger is "
                             "either a shadow (scored off the path) or a canary (answers live), not both")
        return self


class MonitoringSettings(_Section):
    log_predictions: bool = True
    prediction_log: Path = Path("logs/predictions.jsonl")
    psi_threshold: float = Field(0.2, gt=0)
    ks_alpha: float = Field(0.01, gt=0, lt=1)
    min_rows: int = Field(200, ge=10)
    retention_days: float = Field(0, ge=0)
    max_bytes: int = Field(0, ge=0)
    max_files: int = Field(10, ge=1)
    drop_fields: tuple[Literal["inputs", "subject"], ...] = ()
    hash_fields: tuple[Literal["inputs", "subject"], ...] = ()
    salt_env: str = Field("", pattern=r"^([A-Z_][A-Z0-9_]*)?$")
    accuracy_window_hours: float = Field(24, gt=0)
    max_accuracy_drop: float = Field(0.05, ge=0, le=1)
    min_labelled_rows: int = Field(100, ge=1)

    _not_a_settings_variable = field_validator("salt_env")(_not_a_settings_variable)
    _split_fields = field_validator("drop_fields", "hash_fields", mode="before")(
        EvaluationSettings._split_columns.__func__)


class StreamingSettings(_Section):
    redis_url_env: str = Field("REDIS_URL", pattern=r"^[A-Z_][A-Z0-9_]*$")
    group: str = Field("mlops-nb", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    dead_letter: str = Field("mlops-nb:dead-letter", min_length=1)
    max_batch_size: int = Field(64, ge=1, le=4096)
    max_wait_ms: float = Field(5, ge=0)
    claim_idle_ms: int = Field(30000, ge=100)
    result_ttl_s: int = Field(86400, ge=1)

    _not_a_settings_variable = field_validator("redis_url_env")(_not_a_settings_variable)


class OrchestratorSettings(_Section):
    image: str = Field("mlops-nb-pipeline:latest", pattern=r"^[a-z0-9][a-z0-9._/:@-]*$")
    storage: str = ""
    volume_claim: str = Field("", pattern=r"^([a-z0-9][a-z0-9.-]*)?$")
    secret: str = Field("", pattern=r"^([a-z0-9][a-z0-9.-]*)?$")

    @field_validator("storage")
    @classmethod
    def _a_path_or_an_object_store(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if value and not ("://" in value and len(parts.scheme) > 1) and not Path(value).is_absolute():
            raise ValueError(f"{value!r}: expected an absolute path every task mounts, or an fsspec URI "
                             "(s3://bucket/prefix, gs://..., file:///...)")
        _refuse_credentials(parts, "the object store's client reads them from environment variables (e.g. "
                            "AWS_ACCESS_KEY_ID; see [orchestrator] secret)")
        return value

    @model_validator(mode="after")
    def _a_claim_mounts_a_path(self):
        if self.volume_claim and (self.remote or not self.storage):
            raise ValueError("volume_claim mounts the claim at storage, which must then be an absolute path")
        return self

    @property
    def remote(self) -> bool:
        """Products in an object store (copied in and out by each task), not on a mounted path."""
        return "://" in self.storage


class Settings(_Section):
    """All project settings; `root` is the folder holding settings.ini, and relative paths resolve against it."""

    root: Path
    data: DataSettings = DataSettings()
    validation: ValidationSettings = ValidationSettings()
    training: TrainingSettings = TrainingSettings()
    search: SearchSettings = SearchSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    paths: PathsSettings = PathsSettings()
    tracking: TrackingSettings = TrackingSettings()
    registry: RegistrySettings = RegistrySettings()
    gates: GatesSettings = GatesSettings()
    export: ExportSettings = ExportSettings()
    serving: ServingSettings = ServingSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    streaming: StreamingSettings = StreamingSettings()
    orchestrator: OrchestratorSettings = OrchestratorSettings()

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="after")
    def _shadow_needs_the_log(self):
        if (self.serving.shadow_fraction or self.serving.canary_fraction) and not self.monitoring.log_predictions:
            raise ValueError("[serving] shadow_fraction or canary_fraction > 0 needs [monitoring] log_predictions = "
                             "true: the challenger's answers are compared from the prediction log")
        return self

    @model_validator(mode="after")
    def _search_candidates_are_valid_training(self):
        try:
            self.search.candidates(self.training)
        except ValidationError as error:
            problems = "; ".join(f"{e['loc'][0]} = {e['input']!r}: {e['msg']}" for e in error.errors())
            raise ValueError(f"[search] gives a candidate [training] cannot take: {problems}") from None
        return self

    def path(self, value: Path | str) -> Path:
        """Resolve a path setting against the project root."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.root / p

    @property
    def products_dir(self) -> Path:
        return self.path(self.paths.products)

    @property
    def tracking_uri(self) -> str:
        """The tracking URI with a relative sqlite path made absolute (so notebooks and servers agree)."""
        prefix = "sqlite:///"
        if self.tracking.uri.startswith(prefix) and not self.tracking.uri.startswith(prefix + "/"):
            return prefix + str(self.path(self.tracking.uri[len(prefix):]))
        return self.tracking.uri

    @property
    def data_source(self) -> str:
        """`digits`, or the data file as an absolute path."""
        return self.data.source if self.data.source == "digits" else str(self.path(self.data.source))


def find_project_root(start: Path | str | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) that holds settings.ini, or $MLOPS_NB_ROOT."""
    if os.environ.get(ENV_PREFIX + "ROOT"):
        return Path(os.environ[ENV_PREFIX + "ROOT"]).resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in [here, *here.parents]:
        if (folder / SETTINGS_FILE).is_file():
            return folder
    raise SettingsError(f"no {SETTINGS_FILE} found in {here} or any parent folder; run from inside the project "
                        f"or set {ENV_PREFIX}ROOT")


def _read_ini(path: Path) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    try:
        parser.read_string(path.read_text(), source=str(path))
    except configparser.Error as e:
        raise SettingsError(f"{path}: not a valid INI file: {e}") from e
    return {section: dict(parser[section]) for section in parser.sections()}


def _apply_env(raw: dict[str, dict[str, str]], environ) -> dict[str, dict[str, str]]:
    sections = set(Settings.model_fields) - {"root"}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "ROOT":
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("_")
        if section not in sections or not key:
            raise SettingsError(f"environment variable {name}: expected {ENV_PREFIX}<SECTION>_<KEY> with SECTION "
                                f"one of {sorted(sections)}")
        raw.setdefault(section, {})[key] = value
    return raw


def _explain(error: ValidationError, source: Path) -> str:
    lines = []
    for e in error.errors():
        loc = [str(p) for p in e["loc"]]
        where = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else f"[{loc[0]}]" if loc else ""
        msg = e["msg"].replace("Value error, ", "")
        if e["type"] == "extra_forbidden":
            section = Settings.model_fields.get(loc[0])
            known = sorted(section.annotation.model_fields) if len(loc) > 1 and section else \
                sorted(set(Settings.model_fields) - {"root"})
            msg = f"unknown key; allowed keys: {', '.join(known)}"
        given = f" = {e['input']!r}" if e["type"] not in ("extra_forbidden", SECRET) and not isinstance(e["input"], dict) \
            else ""
        lines.append(f"{source}: {where}{given}: {msg}" if where else f"{source}: {msg}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def load_settings(root: Path | str | None = None, *, environ=None) -> Settings:
    """Load and validate settings.ini from the project `root` (found from cwd when None), plus env overrides."""
    root = Path(root).resolve() if root else find_project_root()
    path = root / SETTINGS_FILE
    if not path.is_file():
        raise SettingsError(f"{path} does not exist")
    raw = _apply_env(_read_ini(path), os.environ if environ is None else environ)
    try:
        return Settings(root=root, **raw)
    except ValidationError as e:
        raise SettingsError(_explain(e, path)) from None
