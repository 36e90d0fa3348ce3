"""The promotion ledger: every alias change, append-only and hash-chained, stored in the model registry itself."""

# Entries are the versions of a registered model `<model_name>-ledger` (its tags hold the entry), so the ledger
# lives wherever the registry does (a local sqlite store or a tracking server) and MLflow numbers the entries
# atomically. An entry is written before its alias moves; a writer that finds another entry got its place first
# withdraws its own (deleting that version) and tries again, so concurrent writers never lose or fork an entry.

from __future__ import annotations

import getpass
import hashlib
import json
import os
import random
import time
from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict

from mlops_nb.contracts import TAG_PREFIX
from mlops_nb.settings import Settings, load_settings
from mlops_nb.tracking import connect

__all__ = ["Entry", "LedgerError", "append", "entries", "verify", "current", "actor", "ACTOR_ENV", "ledger_name"]

ACTOR_ENV = "LEDGER_ACTOR"  # who moves an alias: this variable, else the OS user
LEDGER_RUN_TAG = TAG_PREFIX + "ledger_run"  # on the ledger's registered model: the run its entries point at
ATTEMPTS = 50


class LedgerError(RuntimeError):
    """The ledger cannot be written or read as a chain; the message says what to do."""


class Entry(BaseModel):
    """One alias change: who, when, which alias from which version to which, why, with the gate figures."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int
    time: str
    actor: str
    alias: str
    from_version: str | None
    to_version: str | None
    reason: str
    gates: dict | None = None
    forced: bool = False
    prev_sha256: str
    sha256: str = ""

    def digest(self) -> str:
        """SHA-256 over every field but `sha256`, the previous entry's hash included: the chain's link."""
        body = self.model_dump(mode="json", exclude={"sha256"})
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


GENESIS = "0" * 64


def ledger_name(model_name: str) -> str:
    return f"{model_name}-ledger"


def actor() -> str:
    """Who is moving an alias: $LEDGER_ACTOR (a CI job, a service account), else the OS user."""
    return os.environ.get(ACTOR_ENV) or getpass.getuser()


def _read(version) -> Entry:
    return Entry.model_validate_json(version.tags[TAG_PREFIX + "entry"])


def _versions(client, name: str) -> list:
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{name}'", max_results=100_000)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    return sorted(found, key=lambda v: int(v.version))


def entries(model_name: str, settings: Settings | None = None) -> list[Entry]:
    """The ledger of `model_name`, oldest first (an entry still being written, its tags not yet there, left out)."""
    return [_read(v) for v in _versions(connect(settings), ledger_name(model_name)) if TAG_PREFIX + "entry" in v.tags]


def current(model_name: str, alias: str, settings: Settings | None = None) -> str | None:
    """The version the ledger says `alias` points at (None: unset)."""
    last = [e for e in entries(model_name, settings) if e.alias == alias]
    return last[-1].to_version if last else None


def append(model_name: str, *, alias: str, to_version: str | None, reason: str, gates: dict | None = None,
           forced: bool = False, settings: Settings | None = None) -> Entry:
    """Record that `alias` moves to `to_version`, then move it (to what the newest entry says, should another
    writer have appended meanwhile). Returns the entry."""
    from mlflow.exceptions import MlflowException

    settings = settings or load_settings()
    client = connect(settings)
    name = ledger_name(model_name)
    try:
        client.create_registered_model(name, description=f"promotion ledger of {model_name} (mlops-nb)")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    run_id = _ledger_run(client, name, settings)
    for _ in range(ATTEMPTS):
        versions = _versions(client, name)
        if any(TAG_PREFIX + "entry" not in v.tags for v in versions):
            time.sleep(0.05)  # another writer's entry is still being written
            continue
        chain = [_read(v) for v in versions]
        previous = chain[-1] if chain else None
        before = [e for e in chain if e.alias == alias]
        entry = Entry(seq=len(chain) + 1, time=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                      actor=actor(), alias=alias, from_version=before[-1].to_version if before else None,
                      to_version=to_version, reason=reason, gates=gates, forced=forced,
                      prev_sha256=previous.sha256 if previous else GENESIS)
        entry = entry.model_copy(update={"sha256": entry.digest()})
        created = client.create_model_version(name, source=f"runs:/{run_id}/ledger", run_id=run_id,
                                              tags={TAG_PREFIX + "entry": entry.model_dump_json()},
                                              description=f"{alias}: {entry.from_version} -> {to_version}: {reason}")
        before_mine = [v.version for v in _versions(client, name) if int(v.version) < int(created.version)]
        if (before_mine[-1] if before_mine else None) != (versions[-1].version if versions else None):
            client.delete_model_version(name, created.version)  # another entry took this place: withdraw, retry
            time.sleep(random.uniform(0, 0.05))
            continue
        _follow(client, model_name, alias, settings)
        return entry
    raise LedgerError(f"could not append to the ledger of {model_name} after {ATTEMPTS} attempts: too many writers")


def _ledger_run(client, name: str, settings: Settings) -> str:
    """The run the ledger's entries point at: a tracking server accepts a model version only with a source inside
    a run (entries hold no model). Made once; two first writers may each make one, and either serves."""
    run_id = client.get_registered_model(name).tags.get(LEDGER_RUN_TAG)
    if run_id is None:
        experiment = client.get_experiment_by_name(settings.tracking.experiment).experiment_id
        run_id = client.create_run(experiment, run_name=name, tags={TAG_PREFIX + "task": "ledger"}).info.run_id
        client.set_terminated(run_id)
        client.set_registered_model_tag(name, LEDGER_RUN_TAG, run_id)
    return run_id


def _follow(client, model_name: str, alias: str, settings: Settings | None) -> None:
    """Point `alias` at what the newest ledger entry for it says."""
    target = current(model_name, alias, settings)
    if target is None:
        client.delete_registered_model_alias(model_name, alias)
    else:
        client.set_registered_model_alias(model_name, alias, target)


def verify(model_name: str, settings: Settings | None = None) -> list[str]:
    """Problems in the chain (an edited, removed or reordered entry), or [] when every link holds."""
    problems, previous = [], GENESIS
    for position, entry in enumerate(entries(model_name, settings), start=1):
        if entry.seq != position:
            problems.append(f"entry {entry.seq} is at position {position}: an entry was removed or reordered")
        if entry.prev_sha256 != previous:
            problems.append(f"entry {entry.seq} does not link to the entry before it")
        if entry.digest() != entry.sha256:
            problems.append(f"entry {entry.seq} was changed after it was written (its hash does not match)")
        previous = entry.sha256
    return problems
