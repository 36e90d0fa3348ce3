"""`mlops-nb stream`: events from a Redis Stream, read in a consumer group and scored in micro-batches by the serving
core; each event's result (or dead letter) is written once, keyed by its id, and the event acknowledged only then."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np
import orjson

from mlops_nb.registry import CHAMPION, fetch_version
from mlops_nb.serving.codecs import PredictCodec, numbers_only
from mlops_nb.serving.prediction_log import PredictionLogWriter
from mlops_nb.serving.scoring import InvalidInput, RowError, ScoringCore
from mlops_nb.settings import Settings

if TYPE_CHECKING:
    import redis

__all__ = ["StreamError", "StreamSummary", "Consumer", "masked_url", "redis_url", "run_stream"]

IDLE_BLOCK_MS = 1000  # an idle consumer's XREADGROUP waits this long: how soon it notices SIGTERM with nothing to do
CLAIM_EVERY = 0.5  # XAUTOCLAIM runs every claim_idle_ms x this, and at once again while its cursor says more are left
# One event's outcome, atomically. KEYS: the event's key, the stream written, the stream read. ARGV: the key's TTL,
# the group, the entry read, then the fields written. The entry is written only when the key is new (the key then
# holds the written entry's id) and acknowledged either way; returns 1 when written, 0 for a replay.
WRITE_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4)), 'EX', ARGV[1])
  redis.call('XACK', KEYS[3], ARGV[2], ARGV[3])
  return 1
end
redis.call('XACK', KEYS[3], ARGV[2], ARGV[3])
return 0
"""


class StreamError(ValueError):
    """The streams cannot be consumed: no Redis URL, Redis unreachable or refusing, clashing stream names."""


@dataclass
class StreamSummary:
    """What one consumer did: events answered, dead letters written, replays (events already answered or dead-lettered:
    acknowledged, nothing written), events reclaimed from other consumers."""

    answered: int = 0
    replays: int = 0
    dead_letters: int = 0
    claimed: int = 0


def masked_url(url: str) -> str:
    """`url` with its password (in the user part, or a `password=` query argument) replaced by ***, and a user part
    without a colon masked whole (some write the password there): the only form of a Redis URL a message shows."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        url = url.replace(parts.netloc, f"{user}:***@{host}" if colon else f"***@{host}", 1)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)


def redis_url(settings: Settings, given: str | None = None) -> str:
    """`given`, else the URL in the environment variable [streaming] redis_url_env names; `StreamError` if neither."""
    url = given or os.environ.get(settings.streaming.redis_url_env)
    if not url:
        raise StreamError(f"no Redis URL: set {settings.streaming.redis_url_env} (the variable [streaming] "
                          "redis_url_env names) to e.g. redis://:PASSWORD@HOST:6379/0, or give --redis-url")
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise StreamError(f"{masked_url(url)}: expected a redis://, rediss:// or unix:// URL")
    return url


def _event(core, fields: dict) -> tuple[str, list, np.ndarray]:
    """(id, rows, features) of an event's fields; `InvalidInput` naming the field otherwise (the request's fields
    named as /predict names them)."""
    event_id = fields.get(b"id", b"").decode(errors="replace")
    if not event_id:
        raise InvalidInput([RowError("id", "required: a non-empty id, which keys the event's one result")])
    body = fields.get(b"request")
    if body is None:
        raise InvalidInput([RowError("request", 'required: a /predict body, {"instances": [[...], ...]}')])
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput([RowError("request", f"not valid JSON: {error}")]) from None
    rows = PredictCodec.rows(payload)
    return event_id, rows, core.validate(rows, numbers_only=numbers_only(body))


class Consumer:
    """One named consumer of the `input` stream in the settings' group, writing results to `output`."""

    def __init__(self, client: redis.Redis, core, settings: Settings, *, input: str, output: str, name: str,
                 log=None):
        self.client, self.core, self.log = client, core, log
        self.config = settings.streaming
        self.input, self.output, self.name = input, output, name
        self.summary = StreamSummary()
        self.stopping = False
        self._claim_from, self._next_claim = "0-0", 0.0

    def run(self) -> StreamSummary:
        """Consume until `stopping` is set (the batch in hand is finished first), then leave the group if idle."""
        self.create_group()
        while not self.stopping:
            self.handle(self.claimed() or self.read())
        self.leave()
        return self.summary

    def create_group(self) -> None:
        """Create the group (and the stream) if missing, from id 0: events sent before any consumer ran count too."""
        import redis

        try:
            self.client.xgroup_create(self.input, self.config.group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def claimed(self) -> list:
        """Entries pending for over claim_idle_ms on any consumer (a dead one), now this one's (XAUTOCLAIM)."""
        if time.monotonic() < self._next_claim:
            return []
        cursor, entries, _ = self.client.xautoclaim(self.input, self.config.group, self.name,
                                                    self.config.claim_idle_ms, self._claim_from,
                                                    count=self.config.max_batch_size)
        self._claim_from = cursor
        if cursor == b"0-0":
            self._next_claim = time.monotonic() + self.config.claim_idle_ms * CLAIM_EVERY / 1000
        self.summary.claimed += len(entries)
        return entries

    def read(self) -> list:
        """Up to max_batch_size new entries: the first waited for up to IDLE_BLOCK_MS, then more for max_wait_ms."""
        size = self.config.max_batch_size
        entries = self._read(size, IDLE_BLOCK_MS)
        deadline = time.monotonic() + self.config.max_wait_ms / 1000
        while entries and len(entries) < size and (left := deadline - time.monotonic()) > 0:
            more = self._read(size - len(entries), max(1, round(left * 1000)))  # BLOCK 0 would wait forever
            if not more:
                break
            entries += more
        return entries

    def _read(self, count: int, block_ms: int) -> list:
        reply = self.client.xreadgroup(self.config.group, self.name, {self.input: ">"}, count=count, block=block_ms)
        return reply[0][1] if reply else []

    def handle(self, entries: list) -> None:
        """Validate each entry on its own, score the valid ones' rows in one ONNX call, then write each answer or
        dead letter once and acknowledge its entry (one pipeline of WRITE_ONCE scripts); log what was written."""
        if not entries:
            return
        started = time.perf_counter()
        events, dead = [], []
        for entry_id, fields in entries:
            try:
                events.append((entry_id, *_event(self.core, fields)))
            except InvalidInput as invalid:
                dead.append((entry_id, fields.get(b"id", b""), invalid))
        scored = self._score([features for *_, features in events])
        pipe = self.client.pipeline(transaction=False)
        latency_ms = f"{(time.perf_counter() - started) * 1000:.3f}"
        request_ids = [secrets.token_hex(8) for _ in events]
        for (entry_id, event_id, *_), probabilities, request_id in zip(events, scored, request_ids):
            answer = orjson.dumps(self.core.answer(probabilities, request_id), option=orjson.OPT_SERIALIZE_NUMPY)
            self._write(pipe, f"{self.output}:id:{event_id}", self.output, entry_id,
                        {"id": event_id, "result": answer, "model_version": self.core.card.model_version,
                         "latency_ms": latency_ms})
        for entry_id, event_id, invalid in dead:
            self._write(pipe, f"{self.config.dead_letter}:{self.input}:{entry_id.decode()}", self.config.dead_letter,
                        entry_id, {"stream": self.input, "entry": entry_id, "id": event_id,
                                   "field": invalid.errors[0].field, "reason": str(invalid)})
        written = pipe.execute()
        for (_, _, rows, _), probabilities, request_id, new in zip(events, scored, request_ids, written):
            if new and self.log:
                self.log.put(self.core.record(rows, probabilities, request_id, started))
        self.summary.answered += sum(written[:len(events)])
        self.summary.dead_letters += sum(written[len(events):])
        self.summary.replays += len(written) - sum(written)

    def _score(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """Each event's probabilities, from one ONNX call on all their rows."""
        if not batches:
            return []
        probabilities = self.core.score(np.concatenate(batches))
        return np.split(probabilities, np.cumsum([len(b) for b in batches])[:-1])

    def _write(self, pipe, key: str, stream: str, entry_id: bytes, fields: dict) -> None:
        """Queue WRITE_ONCE (EVAL, not EVALSHA: redis-py checks a registered script's SHA with one more round trip
        per pipeline, and Redis caches the compiled script anyway)."""
        pipe.eval(WRITE_ONCE, 3, key, stream, self.input, self.config.result_ttl_s, self.config.group, entry_id,
                  *(x for item in fields.items() for x in item))

    def leave(self) -> None:
        """Remove this consumer from the group when nothing is pending on it, so that restarts leave no names."""
        if not self.client.xpending_range(self.input, self.config.group, "-", "+", 1, consumername=self.name):
            self.client.xgroup_delconsumer(self.input, self.config.group, self.name)


def run_stream(settings: Settings, *, input: str, output: str, url: str | None = None, model: str = CHAMPION,
               consumer: str | None = None) -> StreamSummary:
    """Consume `input` with a registered version (default: the champion) until SIGTERM or SIGINT, which finish the
    batch in hand; results to `output`, dead letters to [streaming] dead_letter. `StreamError` when Redis cannot be
    used, `RegistryError` for a version that cannot be fetched."""
    import redis  # here, not at module level: every `mlops-nb` command imports this module's StreamError

    url = redis_url(settings, url)
    if len({input, output, settings.streaming.dead_letter}) < 3:
        raise StreamError("the input, output and dead-letter ([streaming] dead_letter) streams must be three streams")
    try:
        client = redis.Redis.from_url(url)
        client.ping()
    except (redis.RedisError, ValueError) as error:
        raise StreamError(f"cannot use Redis at {masked_url(url)}: {error}") from None
    with tempfile.TemporaryDirectory() as tmp:
        folder, card = fetch_version(settings.registry.model_name, model, f"{tmp}/model", settings)
        core = ScoringCore(folder, card, device=settings.serving.device,
                           max_rows=settings.serving.max_rows_per_request)
    log = PredictionLogWriter.from_settings(settings) if settings.monitoring.log_predictions else None
    name = consumer or f"{socket.gethostname()}-{os.getpid()}"
    worker = Consumer(client, core, settings, input=input, output=output, name=name, log=log)

    def stop(signum, frame):
        worker.stopping = True

    for each in (signal.SIGTERM, signal.SIGINT):
        signal.signal(each, stop)
    print(f"mlops-nb stream: {masked_url(url)} {input} -> {output} (dead letters: {settings.streaming.dead_letter}), "
          f"group {settings.streaming.group}, consumer {name}, {card.model_name} v{card.model_version}",
          file=sys.stderr, flush=True)
    try:
        return worker.run()
    except redis.RedisError as error:
        raise StreamError(f"Redis at {masked_url(url)}: {error}") from None
    finally:
        if log:
            log.close()

