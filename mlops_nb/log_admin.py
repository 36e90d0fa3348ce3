"""`mlops-nb log erase` and `prune`: remove records from every file of the prediction log (rotated ones too), each
file rewritten atomically under the log's exclusive lock, which the serving writers respect."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from mlops_nb.monitoring import iter_prediction_log, log_files, log_lock
from mlops_nb.privacy import read_salt, salted_hash
from mlops_nb.products import atomic_path

__all__ = ["erase", "prune"]


def _parse(line: bytes) -> dict | None:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None


def _lines(file) -> Iterator[bytes]:
    return (line for line in file if line.strip())


def _rewrite(path: Path, remove: Callable[[dict | None, bytes], bool]) -> tuple[int, int]:
    """Rewrite `path` without the lines `remove(record, line)` picks (record None: the line does not parse), through
    a temporary file renamed onto it; a file left empty is deleted. Returns (removed, kept) record counts."""
    with open(path, "rb") as src:
        total, picked = 0, set()
        for total, line in enumerate(_lines(src), 1):
            if remove(_parse(line), line):
                picked.add(total - 1)
    if not picked or len(picked) == total:
        if picked:
            path.unlink()
        return len(picked), total - len(picked)
    with atomic_path(path) as tmp:
        with open(path, "rb") as src, open(tmp, "wb") as out:
            out.writelines(line for i, line in enumerate(_lines(src)) if i not in picked)
        shutil.copymode(path, tmp)
    return len(picked), total - len(picked)


def _each_file(log: Path, remove) -> dict[str, tuple[int, int]]:
    """`_rewrite` over every file of the log, oldest first (the caller holds the exclusive lock)."""
    return {str(path): _rewrite(path, remove) for path in log_files(log)}


def erase(settings, log: Path, request_ids: list[str] = (), subjects: list[str] = ()) -> dict[str, tuple[int, int]]:
    """Remove the records of `request_ids`, and of each subject key (as logged, or its salted hash when a salt is set)
    with every record sharing a request id with one of them (a shadow record holds no subject)."""
    salt = read_salt(settings.monitoring) if subjects else None
    keys = set(subjects) | {salted_hash(s, salt) for s in subjects if salt}
    ids = set(request_ids)
    with log_lock(log):
        for record in iter_prediction_log(log_files(log), {}):
            if record.get("subject") in keys:
                ids.add(record["request_id"])
        needles = [orjson.dumps(k) for k in ids | keys]

        def remove(record, line):
            if record is None:  # a torn line: removed when it might be theirs
                return any(n in line for n in needles)
            return record.get("request_id") in ids or record.get("subject") in keys

        return _each_file(log, remove)


def prune(settings, log: Path, now: float | None = None) -> dict[str, tuple[int, int]]:
    """Remove the records answered more than `[monitoring] retention_days` ago and the lines that do not parse (torn
    writes); files left empty (old rotated ones) are deleted. Nothing when retention_days is 0 (keep)."""
    if not settings.monitoring.retention_days:
        return {}
    cutoff = (time.time() if now is None else now) - settings.monitoring.retention_days * 86400

    def remove(record, line):
        return record is None or record.get("time", cutoff) < cutoff

    with log_lock(log):
        return _each_file(log, remove)
