"""Redaction of prediction-log records: `[monitoring] drop_fields` are written as null, `hash_fields` as a salted
hash whose salt is read from the environment variable `salt_env` names (never a setting, never printed)."""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Callable

import orjson

__all__ = ["PrivacyError", "read_salt", "salted_hash", "redactor"]


class PrivacyError(ValueError):
    """Redaction is configured but cannot work (the salt's environment variable is empty)."""


def read_salt(monitoring, environ=None) -> bytes | None:
    """The salt from the environment variable `monitoring.salt_env` names; None when no variable is named. An empty or
    unset variable is refused when `hash_fields` needs it."""
    if not monitoring.salt_env:
        return None
    salt = (os.environ if environ is None else environ).get(monitoring.salt_env, "")
    if not salt and monitoring.hash_fields:
        raise PrivacyError(f"[monitoring] hash_fields = {', '.join(monitoring.hash_fields)} needs a salt, but the "
                           f"environment variable {monitoring.salt_env} ([monitoring] salt_env) is empty: set it to a "
                           "secret string kept the same for the project's life (the same key then gives the same hash)")
    return salt.encode() or None


def salted_hash(value, salt: bytes) -> str:
    """HMAC-SHA-256 (a salted SHA-256) of the value's JSON, as hex: the same value and salt give the same hash."""
    return hmac.new(salt, orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY), hashlib.sha256).hexdigest()


def redactor(monitoring, environ=None) -> Callable[[dict], dict] | None:
    """A function that redacts one record as `[monitoring]` says (None when nothing is redacted); refuses a missing
    salt now, so a service fails at start rather than per record."""
    drop, hashed = monitoring.drop_fields, monitoring.hash_fields
    if not drop and not hashed:
        return None
    salt = read_salt(monitoring, environ)

    def redact(record: dict) -> dict:
        out = {**record, **{name: None for name in drop}}
        out.update({name: salted_hash(record[name], salt) for name in hashed if record.get(name) is not None})
        return out

    return redact
