"""Monitoring: reading the prediction log that the serving path writes (`mlops_nb.serving.prediction_log`)."""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

__all__ = ["read_prediction_log", "iter_prediction_log", "log_files", "log_lock"]


def log_files(path: Path | str) -> list[Path]:
    """`path` with its rotated siblings, oldest first: `PATH.N`, ..., `PATH.1`, then `PATH` (those that exist)."""
    path = Path(path)
    rotated = [p for p in path.parent.glob(path.name + ".*") if re.fullmatch(r"\d+", p.name[len(path.name) + 1:])]
    rotated.sort(key=lambda p: -int(p.name[len(path.name) + 1:]))
    return rotated + ([path] if path.exists() else [])


@contextmanager
def log_lock(path: Path | str, *, shared: bool = False):
    """Hold the log's advisory lock (`flock` on `PATH.lock`, a local file system's): writers append under it shared;
    rotation, `mlops-nb log erase` and `prune` rename and rewrite files under it exclusive."""
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def iter_prediction_log(path: Path | str | Iterable[Path | str], counts: dict | None = None) -> Iterator[dict]:
    """The records of a prediction log (one file, or several in the order given) one at a time, oldest first (see
    `mlops_nb.contracts.PredictionRecord`). With `counts` given, a line that does not parse (a torn last line, a
    write cut short) is skipped and counted in `counts["torn"]`; without, it raises."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    for one in paths:
        with open(one, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    if counts is None:
                        raise
                    counts["torn"] = counts.get("torn", 0) + 1
                    continue
                yield record


def read_prediction_log(path: Path | str) -> list[dict]:
    """Every record of a prediction log, oldest first."""
    return list(iter_prediction_log(path))
