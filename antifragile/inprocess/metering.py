"""Usage metering, exactly once: a never-blocking in-memory buffer drained in batches to a
Redis Stream, and a consumer that counts every batch once.

Hot path: :meth:`MeteringIntegration.record` appends the (immutable, reusable)
:class:`UsageEvent` to a list and returns; it never blocks, never does I/O and never
raises. A full buffer counts a drop instead of growing.

Background flusher (one task on the service's loop), every ``flush_interval_s`` or
as soon as ``flush_at`` events are buffered:

1. swaps the buffer for an empty one (O(1)),
2. aggregates it by (tenant, operation) in C (``collections.Counter``), holding at most
   ``max_pending_keys`` distinct pairs (the rest stays in the raw buffer),
3. writes each batch (at most ``max_batch_keys`` pairs) with one Lua script: one stream
   entry per (tenant, operation), and the writer's high-water mark, atomically.

Stream entry format (all values are strings, as Redis stores them)::

    tenant     tenant id
    operation  operation name
    units      sum of the units of the aggregated events
    count      number of aggregated events
    instance   instance id of the writer
    batch      "{instance}:{nonce}:{sequence}" - the same for every entry of one batch

Exactly once, end to end:

* **Unique batch ids.** ``nonce`` is random per :class:`MeteringIntegration` (so per
  process, and new at every restart): two writers with the same instance id, or a
  restarted container, never share a batch id.
* **Idempotent writes.** A batch is written by a script that first checks the writer's
  high-water mark ``{stream}:writer:{instance}:{nonce}`` (the last sequence stored, with a
  TTL of ``writer_mark_ttl_s``). If the connection breaks after Redis ran the script but
  before the reply arrived, the retry of the same batch finds its sequence stored and
  writes nothing (``stats().resent_batches`` counts it).
* **Idempotent consumption.** :class:`UsageConsumer` reads with a consumer group and
  applies each entry with a script that, atomically, acknowledges it (only an entry
  still pending for the group counts), checks a record of processed
  ``(batch, tenant, operation)`` kept for ``dedupe_ttl_s``, and adds it to the group's
  ledger hashes. Entries delivered before a crash are re-read by the restarted consumer
  (its own pending entries) or claimed from a dead one (``XAUTOCLAIM``), and counted
  once. A lost reply of the apply script is retried with the same call token, and Redis
  answers with the outcome of the run that happened (``{stream}:billed:{group}:receipts``
  keeps each consumer's last one), so what it applied is returned by a call too.
  :func:`read_usage` without a group sums the whole stream, also dropping repeated
  batches.

Durability is Redis's: a batch counts as written once Redis confirmed it. With an
append-only file on the default ``appendfsync everysec``, a Redis process killed
(SIGKILL, OOM killer) may lose batches it had confirmed - seen in our tests: 301 of
1,250 events confirmed, then gone after a restart - because Redis postpones the file
write while a background fsync runs and replies anyway. Where usage must survive a Redis
crash, run it with ``appendfsync always`` (or replicas and ``WAIT``).

Every key derives from the stream name, so on Redis Cluster a hash-tagged stream name
(``{af}:metering``) keeps them in one slot.

Redis down: the flusher keeps draining the buffer into its aggregate (memory grows
with distinct (tenant, operation) pairs, not with events, up to ``max_pending_keys``
pairs counting the in-flight batch), retries with backoff and writes everything when
Redis returns. ``stop()`` flushes.

Accounting is exact: every recorded event is in exactly one stage - written to the
stream, buffered (raw buffer, aggregate or in-flight batch) or dropped - so
``stats()`` always satisfies ``recorded == written + buffered + dropped``. ``stats()``
reads counters only, so it is safe from another thread (the Prometheus scrape thread),
and consistent there too (a read overlapping a move between stages is taken again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice, repeat
from typing import Any, NamedTuple, Protocol

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from antifragile.constants import REDIS_METERING_STREAM
from antifragile.errors import ConfigError
from antifragile.inprocess._aio import cancel_and_wait

log = logging.getLogger(__name__)


class UsageEvent(NamedTuple):
    """One metered use. Immutable: build it once per call site and record it many times.

    Attributes:
        tenant_id: Who is billed.
        operation: What was done (e.g. ``guarded_call``).
        units: How much (default 1).
    """

    tenant_id: str
    operation: str
    units: int = 1


@dataclass(frozen=True, slots=True)
class MeteringStats:
    """Counters of a :class:`MeteringIntegration`; ``recorded == written + buffered + dropped``.

    Attributes:
        recorded: Events handed to ``record``/``record_usage`` or counted by sources.
        written: Events confirmed written to the stream (once each).
        buffered: Events waiting (raw buffer, aggregate, in-flight batch).
        dropped: Events refused because the buffer was full, or malformed (see
            ``invalid``).
        batches: Batches confirmed stored.
        write_errors: Failed stream writes (each retried).
        last_error: Text of the last write error, empty if none.
        pending_keys: Distinct (tenant, operation) pairs held in the aggregate and the
            in-flight batch; never above ``max_pending_keys``.
        resent_batches: Retried batches that Redis had already stored (a lost reply);
            written once, counted once.
        invalid: Of ``dropped``, malformed records (tenant or operation not a string,
            units not an integer - an integral float such as 2.0 is taken as 2).
    """

    recorded: int
    written: int
    buffered: int
    dropped: int
    batches: int
    write_errors: int
    last_error: str
    pending_keys: int = 0
    resent_batches: int = 0
    invalid: int = 0


class CounterSource(Protocol):
    """Something that counts usage in place (e.g. a Guard) and is harvested by the flusher."""

    def harvest_usage(self) -> tuple[str, str, int, int]:
        """Return ``(tenant, operation, units, count)`` counted since the last harvest."""
        ...

    def pending_usage(self) -> int:
        """Events counted but not yet harvested."""
        ...


# One batch, atomically and at most once per (writer, sequence).
# KEYS[1] stream, KEYS[2] the writer's high-water mark.
# ARGV[1] sequence, ARGV[2] mark TTL (ms), ARGV[3] MAXLEN ('' = none), ARGV[4] instance,
# ARGV[5] batch id, then (tenant, operation, units, count) per entry.
_WRITE_BATCH_LUA = """
local seq = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if last >= seq then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 0
end
for i = 6, #ARGV, 4 do
  if ARGV[3] == '' then
    redis.call('XADD', KEYS[1], '*', 'tenant', ARGV[i], 'operation', ARGV[i + 1],
      'units', ARGV[i + 2], 'count', ARGV[i + 3], 'instance', ARGV[4], 'batch', ARGV[5])
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'tenant', ARGV[i],
      'operation', ARGV[i + 1], 'units', ARGV[i + 2], 'count', ARGV[i + 3],
      'instance', ARGV[4], 'batch', ARGV[5])
  end
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""

WRITER_MARK_TTL_S = 7 * 24 * 3600.0
"""Default lifetime of a writer's high-water mark after its last batch (7 days)."""


def _check_int(owner: str, name: str, value: object, minimum: int) -> None:
    """Refuse a setting that is not an int >= ``minimum`` with one line naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{owner}.{name}: must be an integer >= {minimum} (got {value!r})")


def _check_seconds(owner: str, name: str, value: object, *, zero_ok: bool = False) -> None:
    """Refuse a duration that is not a finite number > 0 (>= 0 with ``zero_ok``): NaN
    passes every ``<`` test and would silently disable a timer or a TTL."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value >= 0 if zero_ok else value > 0)
    )
    if not ok:
        rule = ">= 0" if zero_ok else "> 0"
        raise ConfigError(f"{owner}.{name}: must be a finite number {rule} (got {value!r})")


class MeteringIntegration:
    """Bounded, never-blocking usage buffer flushed to a Redis Stream, each batch once.

    Args:
        redis_url: Redis to write to. Default: none (then pass ``redis_client`` or
            only buffer).
        stream: Stream key. Default ``af:metering``.
        max_buffer: Raw events held between flushes before drops start. Default
            500,000 (10x the default ``flush_at``: 50 ms of events at 1M events/s).
        flush_interval_s: Seconds between flushes. Default 0.25. Each flush is one
            Redis script call per batch that costs the service's loop 0.2-0.3 ms of CPU;
            at 20 a second (0.05, the old default) it was the largest background cost on
            a busy loop and showed in the p99 of what the loop serves. Usage 0.25 s old
            is fresh enough for billing, and a burst still flushes early at ``flush_at``.
        flush_at: Buffered events that wake the flusher early. Default
            ``max_buffer // 10`` capped at 50,000 (at least 1).
        max_pending_keys: Distinct (tenant, operation) pairs held in the aggregate and
            the in-flight batch together while Redis is down; past it, events stay in
            the raw buffer (which then drops when full). Each counter source (a guard)
            reserves one pair (so the bound must exceed their number). Default 100,000.
        max_batch_keys: Pairs written by one script call. Default 10,000.
        stream_maxlen: Approximate ``MAXLEN ~`` trim of the stream (>= 1); None = no
            trim. Entries trimmed before a consumer applied them are never billed (the
            consumer logs each one), so keep it well above the consumer's lag.
            Default None.
        instance_id: Writer name stored in every entry. Default ``"local"``; batch ids
            are unique even when several writers share it.
        redis_client: A ready ``redis.asyncio.Redis`` to use instead of ``redis_url``.
        stop_timeout_s: How long ``stop()`` keeps retrying a final flush (0: none - what
            is buffered stays buffered, see ``stats()``). Default 5.
        writer_mark_ttl_s: How long Redis keeps this writer's high-water mark after its
            last batch: a batch retried later than this after a lost reply could be
            stored twice (and is then dropped by :class:`UsageConsumer` within its own
            ``dedupe_ttl_s``). Default 7 days.

    Raises:
        ConfigError: a setting out of range (the message names it).
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        stream: str = REDIS_METERING_STREAM,
        max_buffer: int = 500_000,
        flush_interval_s: float = 0.25,
        flush_at: int | None = None,
        max_pending_keys: int = 100_000,
        max_batch_keys: int = 10_000,
        stream_maxlen: int | None = None,
        instance_id: str = "local",
        redis_client: aioredis.Redis | None = None,
        stop_timeout_s: float = 5.0,
        writer_mark_ttl_s: float = WRITER_MARK_TTL_S,
    ) -> None:
        def bad(name: str, value: object, rule: str) -> ConfigError:
            return ConfigError(f"MeteringIntegration.{name}: {rule} (got {value!r})")

        _check_int("MeteringIntegration", "max_buffer", max_buffer, 1)
        _check_seconds("MeteringIntegration", "flush_interval_s", flush_interval_s)
        if flush_at is None:
            flush_at = min(50_000, max(1, max_buffer // 10))
        _check_int("MeteringIntegration", "flush_at", flush_at, 1)
        if flush_at > max_buffer:
            raise bad("flush_at", flush_at, f"must be in [1, max_buffer={max_buffer}]")
        _check_int("MeteringIntegration", "max_pending_keys", max_pending_keys, 1)
        _check_int("MeteringIntegration", "max_batch_keys", max_batch_keys, 1)
        if stream_maxlen is not None:
            # 0 would trim every entry as it is written: usage lost before anyone reads it.
            _check_int("MeteringIntegration", "stream_maxlen", stream_maxlen, 1)
        _check_seconds("MeteringIntegration", "stop_timeout_s", stop_timeout_s, zero_ok=True)
        _check_seconds("MeteringIntegration", "writer_mark_ttl_s", writer_mark_ttl_s)
        self.redis_url = redis_url
        self.stream = stream
        self.max_buffer = max_buffer
        self.flush_interval_s = flush_interval_s
        self.flush_at = flush_at
        self.max_pending_keys = max_pending_keys
        self.max_batch_keys = max_batch_keys
        self.stream_maxlen = stream_maxlen
        self.instance_id = instance_id
        self.stop_timeout_s = stop_timeout_s
        self.writer_mark_ttl_s = writer_mark_ttl_s
        # Random per writer: batch ids never collide across processes, restarts, or
        # writers sharing an instance id.
        self.writer_id = f"{instance_id}:{secrets.token_hex(8)}"
        self._redis = redis_client
        self._owns_redis = redis_client is None
        self._script: Any = None
        self._script_client: Any = None
        self._buf: list[tuple[str, str, int]] = []
        self._dropped = 0
        self._invalid = 0
        # Even while no stage-to-stage move is under way (a seqlock for stats() readers
        # on other threads; the loop's thread never reads in the middle of a move).
        self._version = 0
        self._taken = 0  # events moved out of the raw buffer / sources by the flusher
        self._written = 0
        self._pending: dict[tuple[str, str], list[int]] = {}
        self._pending_events = 0
        self._inflight: dict[tuple[str, str], list[int]] | None = None
        self._inflight_events = 0
        self._inflight_batch = ""
        self._backlog = False  # raw events left unfolded because of max_pending_keys
        self._seq = 0
        self._batches = 0
        self._resent = 0
        self._write_errors = 0
        self._last_error = ""
        self._sources: list[CounterSource] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # One writer of the in-flight batch at a time: two (the flusher and a flush(), or
        # two flush() calls) sent one sequence twice and took the next one in between, so
        # the high-water mark skipped a batch that was never stored.
        self._write_lock = asyncio.Lock()

    # ------------------------------------------------------------------ hot path

    def record(self, event: UsageEvent) -> None:
        """Buffer one event. Never blocks, never raises; counts a drop when full."""
        buf = self._buf
        if len(buf) < self.flush_at:
            buf.append(event)
        else:
            self._record_slow(event)

    def record_usage(self, tenant_id: str, operation: str, units: int = 1) -> None:
        """Buffer one use without building a :class:`UsageEvent` first."""
        buf = self._buf
        if len(buf) < self.flush_at:
            buf.append((tenant_id, operation, units))
        else:
            self._record_slow((tenant_id, operation, units))

    def _record_slow(self, item: tuple[str, str, int]) -> None:
        # Past the early-flush mark: wake the flusher, and refuse once the bound is hit.
        try:
            buf = self._buf
            if len(buf) < self.max_buffer:
                buf.append(item)
            else:
                self._dropped += 1
            wake = self._wake
            if wake is not None and not wake.is_set():
                wake.set()
        except Exception:  # never raise into the caller
            self._dropped += 1

    def add_source(self, source: CounterSource) -> None:
        """Harvest an in-place counter (e.g. a Guard's) at every flush.

        Raises:
            ConfigError: ``max_pending_keys`` would not exceed the number of sources
                (each reserves one pair).
        """
        if len(self._sources) + 1 >= self.max_pending_keys:
            raise ConfigError(
                f"MeteringIntegration.max_pending_keys: must exceed the number of counter "
                f"sources ({len(self._sources) + 1}) (got {self.max_pending_keys!r})"
            )
        self._sources.append(source)

    def remove_source(self, source: CounterSource) -> None:
        """Harvest ``source`` one last time and stop harvesting it."""
        if source in self._sources:
            self._version += 1
            try:
                self._harvest_source(source)
                self._sources.remove(source)
            finally:
                self._version += 1

    # ------------------------------------------------------------------ accounting

    def stats(self) -> MeteringStats:
        """Current counters; ``recorded == written + buffered + dropped`` always holds.

        Reads counters only (no iteration over the aggregate), so it is O(sources) and
        safe to call from another thread (the Prometheus scrape thread): the flusher
        moves events between stages in short marked sections, and a read that overlaps
        one is taken again, so every read is consistent and ``recorded``, ``written``
        and ``dropped`` never go down from one read to the next.
        """
        for _ in range(10_000):
            version = self._version
            if not version & 1:
                snapshot = self._read_stats()
                if self._version == version:
                    return snapshot
            time.sleep(0)  # a move is under way on the loop's thread: let it finish
        return self._read_stats()

    def _read_stats(self) -> MeteringStats:
        raw = len(self._buf)
        unharvested = sum(s.pending_usage() for s in tuple(self._sources))
        held = self._pending_events + self._inflight_events
        inflight = self._inflight
        return MeteringStats(
            recorded=self._taken + raw + unharvested + self._dropped,
            written=self._written,
            buffered=raw + unharvested + held,
            dropped=self._dropped,
            batches=self._batches,
            write_errors=self._write_errors,
            last_error=self._last_error,
            pending_keys=len(self._pending) + (len(inflight) if inflight else 0),
            resent_batches=self._resent,
            invalid=self._invalid,
        )

    # ------------------------------------------------------------------ flusher

    async def start(self) -> None:
        """Connect (lazily) and start the background flusher; idempotent."""
        if self._task is not None and not self._task.done():
            return
        self._connect()
        self._stopping = False
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="antifragile-metering-flusher")

    async def stop(self) -> None:
        """Flush everything buffered (retrying up to ``stop_timeout_s``) and stop."""
        self._stopping = True
        if self._task is not None:
            if self._wake is not None:
                self._wake.set()
            # Not wait_for(task): a cancellation landing as the flusher's own wait ends is
            # swallowed there (Python 3.11), and the flusher - retrying for ever - was then
            # awaited for ever. Wait, then cancel until it has ended.
            try:
                done, _ = await asyncio.wait({self._task}, timeout=self.stop_timeout_s)
            except asyncio.CancelledError:
                self._task.cancel()  # stop() itself cancelled: do not leave the flusher
                raise
            if not done:
                await cancel_and_wait([self._task])
                log.warning(
                    "metering: stop timed out with %d events buffered", self.stats().buffered
                )
            self._task = None
        elif self._redis is not None or self.redis_url:  # never started: final flush here
            deadline = time.monotonic() + self.stop_timeout_s
            while time.monotonic() < deadline:
                if await self.flush():
                    break
                await asyncio.sleep(0.05)  # Redis is down: retry until the deadline
        if self._owns_redis and self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None

    def _connect(self) -> None:
        if self._redis is None and self.redis_url:
            self._redis = aioredis.Redis.from_url(
                self.redis_url, socket_timeout=2.0, socket_connect_timeout=1.0
            )

    async def flush(self) -> bool:
        """Drain and write now (also usable without ``start``, and safe to call while
        the flusher runs or from several tasks at once); True if nothing is left."""
        self._connect()
        async with self._write_lock:
            while True:
                self._drain()
                batches = self._batches
                if not await self._write_pending():
                    return False
                if not self._backlog or self._batches == batches:
                    return not self._buf and not self._backlog

    async def _run(self) -> None:
        backoff = 0.0
        assert self._wake is not None
        progress = False
        while True:
            # A backlog (pairs held back by max_pending_keys) is written on without
            # waiting, as long as the last round wrote something.
            if not self._stopping and not (self._backlog and progress):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval_s + backoff)
            self._wake.clear()
            batches = self._batches
            try:
                async with self._write_lock:
                    self._drain()
                    ok = await self._write_pending()
            except Exception as exc:  # a bug here must not kill metering
                log.exception("metering flush failed")
                self._last_error = repr(exc)
                ok = False
            progress = self._batches > batches
            if ok:
                backoff = 0.0
                if self._stopping and not self._buf and not self._backlog:
                    return
                if self._stopping and not progress:
                    await asyncio.sleep(0.01)  # never spin without awaiting
            else:
                backoff = min(1.0, max(0.05, backoff * 2))
                if self._stopping or self._backlog:
                    await asyncio.sleep(backoff)

    def _harvest_source(self, source: CounterSource) -> None:
        tenant, operation, units, count = source.harvest_usage()
        if count:
            self._taken += count
            self._pending_events += count
            slot = self._pending.get((tenant, operation))
            if slot is None:
                self._pending[(tenant, operation)] = [units, count]
            else:
                slot[0] += units
                slot[1] += count

    def _held_keys(self) -> int:
        inflight = self._inflight
        return len(self._pending) + (len(inflight) if inflight else 0)

    def _drain(self) -> None:
        """Move source counters and raw events into the (tenant, operation) aggregate,
        never holding more than ``max_pending_keys`` pairs (aggregate + in-flight)."""
        self._version += 1  # odd: counters in motion (see stats())
        try:
            self._drain_marked()
        finally:
            self._version += 1

    def _drain_marked(self) -> None:
        pending = self._pending
        bound = self.max_pending_keys
        sources = self._sources
        # A source adds at most one pair; when that could pass the bound it keeps
        # counting in place (no memory grows) until there is room.
        harvested = bool(sources) and self._held_keys() + len(sources) <= bound
        if harvested:
            for source in sources:
                self._harvest_source(source)
        # Usage left in a source is a backlog too: flush() and stop() must not report
        # "nothing left" (and stop must not return) before it is harvested and written.
        skipped = bool(sources) and not harvested and any(s.pending_usage() for s in sources)
        buf = self._buf
        if not buf:
            self._backlog = skipped
            return
        self._buf = []
        held = self._held_keys()
        # Raw events fold while pairs are left; unharvested sources keep theirs reserved.
        # add_source keeps len(sources) < bound, so after a successful write (nothing
        # held) a drain always folds at least one pair: the flusher makes progress.
        room = bound if harvested else bound - len(sources)
        leftover: list[tuple[str, str, int]] = []
        folded = 0
        # Counter hashes whole (tenant, operation, units) tuples in C; the distinct
        # ones are then checked and folded per (tenant, operation) in Python.
        try:
            counted = Counter(buf)
        except TypeError:  # an unhashable field somewhere: find it the slow way
            counted = Counter(self._hashable(buf))
        for item, count in counted.items():
            checked = _valid_item(item)
            if checked is None:
                self._refuse(item, count)
                continue
            tenant, operation, units = checked
            slot = pending.get((tenant, operation))
            if slot is None:
                if held >= room:
                    leftover.extend(repeat(item, count))
                    continue
                pending[(tenant, operation)] = [units * count, count]
                held += 1
            else:
                slot[0] += units * count
                slot[1] += count
            folded += count
        self._taken += folded
        self._pending_events += folded
        self._backlog = bool(leftover) or skipped
        if leftover:
            # Kept in the raw buffer (bounded by max_buffer) until pairs are written.
            leftover.extend(self._buf)
            self._buf = leftover

    def _hashable(self, buf: list[Any]) -> list[Any]:
        kept = []
        for item in buf:
            try:
                hash(item)
            except TypeError:
                self._refuse(item, 1)
                continue
            kept.append(item)
        return kept

    def _refuse(self, item: object, count: int) -> None:
        # A malformed record never reaches the stream, where it would be billed as
        # nothing (or break a reader): it is counted dropped, and said once in a while.
        self._dropped += count
        self._invalid += count
        if self._invalid == count or self._invalid % 1000 < count:
            log.warning(
                "metering: %d malformed usage record(s) dropped (want str tenant, str "
                "operation, integer units), e.g. %r",
                self._invalid,
                item,
            )

    def _take_batch(self) -> None:
        self._version += 1
        try:
            self._take_batch_marked()
        finally:
            self._version += 1

    def _take_batch_marked(self) -> None:
        pending = self._pending
        if len(pending) <= self.max_batch_keys:
            batch, self._pending = pending, {}
        else:
            keys = list(islice(pending, self.max_batch_keys))
            batch = {k: pending.pop(k) for k in keys}
        events = sum(c for _, c in batch.values())
        self._pending_events -= events
        self._inflight_events = events
        self._inflight = batch
        self._seq += 1
        self._inflight_batch = f"{self.writer_id}:{self._seq}"

    def _writer_script(self, client: aioredis.Redis) -> Any:
        if self._script is None or self._script_client is not client:
            self._script = client.register_script(_WRITE_BATCH_LUA)
            self._script_client = client
        return self._script

    async def _write_pending(self) -> bool:
        """Write the in-flight batch (retry) and the aggregate; True when nothing is left."""
        while True:
            if self._inflight is None:
                if not self._pending:
                    return True
                self._take_batch()
            if self._redis is None:
                return False
            batch = self._inflight
            assert batch is not None
            args: list[Any] = [
                self._seq,
                max(1, int(self.writer_mark_ttl_s * 1000)),
                "" if self.stream_maxlen is None else self.stream_maxlen,
                self.instance_id,
                self._inflight_batch,
            ]
            for (tenant, operation), (units, count) in batch.items():
                args += (tenant, operation, units, count)
            try:
                script = self._writer_script(self._redis)
                stored = await script(
                    keys=[self.stream, f"{self.stream}:writer:{self.writer_id}"], args=args
                )
            except (RedisError, OSError) as exc:
                self._write_errors += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                if self._write_errors == 1 or self._write_errors % 100 == 0:
                    log.warning(
                        "metering: write to %s failed (%s); kept buffered",
                        self.stream,
                        self._last_error,
                    )
                return False
            if not int(stored):
                self._resent += 1  # stored by an attempt whose reply was lost
            self._version += 1
            self._written += self._inflight_events
            self._inflight_events = 0
            self._batches += 1
            self._inflight = None
            self._version += 1


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """Summed usage of one (tenant, operation)."""

    tenant_id: str
    operation: str
    units: int
    count: int


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


MAX_ENTRY_VALUE = 2**53
"""Largest ``units``/``count`` of one stream entry that readers accept (larger ones are
unreadable: skipped with a warning)."""


def decode_entry(fields: dict[Any, Any]) -> tuple[str, str, int, int, str]:
    """Decode one stream entry into ``(tenant, operation, units, count, batch)``.

    Raises:
        KeyError / ValueError: not a metering entry (or a value beyond
            :data:`MAX_ENTRY_VALUE`).
    """
    f = {_s(k): _s(v) for k, v in fields.items()}
    units, count = _integer(f["units"]), _integer(f["count"])
    # Beyond this a ledger HINCRBY fails inside the apply script, which Redis does not
    # roll back (the entries before it stayed applied while the call raised).
    if abs(units) > MAX_ENTRY_VALUE or not 0 <= count <= MAX_ENTRY_VALUE:
        raise ValueError(f"units {units} or count {count} out of range")
    return f["tenant"], f["operation"], units, count, f.get("batch", "")


def _integer(text: str) -> int:
    # Writers before the drain checked units stored an integral float as "2.0": that is
    # 2, not an unreadable entry (1.5 still is).
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise
        return int(value)


def sum_entries(
    entries: Iterable[dict[Any, Any]],
) -> dict[tuple[str, str], UsageTotal]:
    """Sum decoded entries per (tenant, operation), dropping re-sent duplicate batches.

    An unreadable entry is skipped with a warning (as :class:`UsageConsumer` does): one
    foreign or malformed entry must not make the whole stream unreadable.
    """
    seen: set[tuple[str, str, str]] = set()
    acc: dict[tuple[str, str], list[int]] = {}
    for fields in entries:
        try:
            tenant, operation, units, count, batch = decode_entry(fields or {})
        except (KeyError, ValueError, OverflowError):
            log.warning("metering: unreadable entry skipped: %r", fields)
            continue
        if batch:
            key = (batch, tenant, operation)
            if key in seen:
                continue
            seen.add(key)
        slot = acc.setdefault((tenant, operation), [0, 0])
        slot[0] += units
        slot[1] += count
    return {k: UsageTotal(k[0], k[1], u, c) for k, (u, c) in acc.items()}


# Apply entries to a group's ledger, each at most once.
# KEYS[1] stream, KEYS[2] units ledger, KEYS[3] count ledger, KEYS[4] processed record,
# KEYS[5] receipts (hash: consumer -> "{token}:{flags}" of its last call).
# ARGV[1] group, ARGV[2] now (ms), ARGV[3] record TTL (ms), ARGV[4] consumer, ARGV[5] call
# token, then per entry: id, batch ('' = none), ledger field ('' = unreadable), units, count.
# An entry counts only if it was still pending for the group (XACK returns 1: no other
# consumer applied it) and its (batch, field) was not applied before (a duplicate).
# Returns one '0'/'1' flag per entry. A call repeated with the token of the consumer's
# last call (its reply was lost) returns that call's flags and changes nothing.
_APPLY_LUA = """
local receipt = redis.call('HGET', KEYS[5], ARGV[4])
local prefix = ARGV[5] .. ':'
if receipt and string.sub(receipt, 1, #prefix) == prefix then
  return string.sub(receipt, #prefix + 1)
end
local now = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[3]))
local applied = {}
for i = 6, #ARGV, 5 do
  local ok = '0'
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 and ARGV[i + 2] ~= '' then
    local fresh = 1
    if ARGV[i + 1] ~= '' then
      fresh = redis.call('ZADD', KEYS[4], 'NX', ARGV[2], ARGV[i + 1] .. '\\n' .. ARGV[i + 2])
    end
    if fresh == 1 then
      redis.call('HINCRBY', KEYS[2], ARGV[i + 2], ARGV[i + 3])
      redis.call('HINCRBY', KEYS[3], ARGV[i + 2], ARGV[i + 4])
      ok = '1'
    end
  end
  applied[#applied + 1] = ok
end
local flags = table.concat(applied)
redis.call('HSET', KEYS[5], ARGV[4], prefix .. flags)
return flags
"""

_APPLY_ATTEMPTS = 4
"""Tries of one apply call inside ``consume()`` (0.35 s of backoff in all)."""

DEDUPE_TTL_S = 7 * 24 * 3600.0
"""Default time a consumer group remembers an applied (batch, tenant, operation)."""


def ledger_keys(stream: str, group: str) -> tuple[str, str, str]:
    """``(units, count, processed)`` keys of a consumer group's ledger on ``stream``."""
    prefix = f"{stream}:billed:{group}"
    return f"{prefix}:units", f"{prefix}:count", f"{prefix}:processed"


def _valid_item(item: object) -> tuple[str, str, int] | None:
    """``(tenant, operation, units)`` with integer units, or None when malformed."""
    if not isinstance(item, tuple) or len(item) != 3:
        return None
    tenant, operation, units = item
    if not isinstance(tenant, str) or not isinstance(operation, str):
        return None
    if isinstance(units, float) and units.is_integer():
        units = int(units)
    if isinstance(units, int) and abs(units) <= MAX_ENTRY_VALUE:
        return tenant, operation, int(units)
    return None  # not an integer, or beyond what a reader accepts


class UsageConsumer:
    """A billing reader of a metering stream that counts every recorded event once.

    Each call of :meth:`consume` reads, with the consumer group ``group``, (1) the
    entries already delivered to this consumer name but never applied (a crash between
    read and apply), (2) entries idle for ``claim_idle_s`` in other consumers' pending
    lists (a dead consumer), (3) new entries; and applies each with one atomic script
    (acknowledge + dedupe + add to the ledger). The ledger - hashes
    ``{stream}:billed:{group}:units`` and ``...:count``, field ``["tenant", "operation"]``
    - is the bill: :meth:`totals` reads it. Run several consumers with different names
    to share the load; run the same name after a restart to pick up where it stopped.

    Args:
        client: Redis holding the stream.
        stream: Stream key. Default ``af:metering``.
        group: Consumer group (one ledger per group). Default ``"billing"``.
        consumer: This consumer's name in the group, unique among the consumers running
            at the same time (the same name again after a restart). Default ``"reader"``.
        batch_size: Entries per read. Default 1,000.
        claim_idle_s: Claim other consumers' entries pending this long; None: never.
            Default 60.
        dedupe_ttl_s: How long an applied (batch, tenant, operation) is remembered.
            Default 7 days.

    Raises:
        ConfigError: a setting out of range (the message names it and the value).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        stream: str = REDIS_METERING_STREAM,
        *,
        group: str = "billing",
        consumer: str = "reader",
        batch_size: int = 1_000,
        claim_idle_s: float | None = 60.0,
        dedupe_ttl_s: float = DEDUPE_TTL_S,
    ) -> None:
        _check_int("UsageConsumer", "batch_size", batch_size, 1)
        if claim_idle_s is not None:
            _check_seconds("UsageConsumer", "claim_idle_s", claim_idle_s, zero_ok=True)
        # 0 (or NaN) would forget every applied batch at once: a duplicate billed twice.
        _check_seconds("UsageConsumer", "dedupe_ttl_s", dedupe_ttl_s)
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.batch_size = batch_size
        self.claim_idle_s = claim_idle_s
        self.dedupe_ttl_s = dedupe_ttl_s
        self._keys = ledger_keys(stream, group)
        self._receipts = f"{stream}:billed:{group}:receipts"
        # The last apply call whose reply never arrived: (args with its token, entries).
        self._unconfirmed: tuple[list[Any], list[tuple[str, str, int, int] | None]] | None = None
        # One consume() at a time per object: the receipt of a lost reply is per consumer
        # name, and a concurrent call's apply would replace it before the retry.
        self._lock = asyncio.Lock()
        self._script = client.register_script(_APPLY_LUA)
        self._group_ready = False

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def consume(self, *, block_ms: int | None = None) -> dict[tuple[str, str], UsageTotal]:
        """Apply everything not yet applied by the group; return what this call added.

        Args:
            block_ms: Wait up to this long for new entries when there are none. Default:
                do not wait.

        Calls on one object run one at a time. When Redis fails after this call applied
        some usage, the call returns that usage (and logs the failure) rather than
        raising it away; the next call goes on where this one stopped.

        Raises:
            redis.RedisError: Redis failed before this call applied anything; nothing
                half-applied (retry the call). When the reply of an apply was lost even
                after retries, that apply may have happened: the next ``consume()`` of
                this object returns its usage (the ledger counts it once either way;
                after a crash of this process, only the ledger - :meth:`totals` - has it).
        """
        added: dict[tuple[str, str], list[int]] = {}
        async with self._lock:
            try:
                await self._consume_once(added, block_ms)
            except (RedisError, OSError) as exc:
                if not added:
                    raise
                # Applied and confirmed before the failure: returned by no later call.
                log.warning(
                    "metering: consume of %s stopped early (%s: %s); returning what it applied",
                    self.stream,
                    type(exc).__name__,
                    exc,
                )
        return {k: UsageTotal(k[0], k[1], u, c) for k, (u, c) in added.items()}

    async def _consume_once(
        self, added: dict[tuple[str, str], list[int]], block_ms: int | None
    ) -> None:
        try:
            await self._consume(added, block_ms)
        except ResponseError as exc:
            # The group is gone: Redis restarted without persistence, or the stream was
            # deleted. Create it again (from the start of what the stream now holds)
            # instead of failing every call until this process restarts.
            if "NOGROUP" not in str(exc):
                raise
            log.warning("metering: group %s of %s was gone; created again", self.group, self.stream)
            self._group_ready = False
            await self._consume(added, block_ms)

    async def _consume(self, added: dict[tuple[str, str], list[int]], block_ms: int | None) -> None:
        await self._ensure_group()
        # (0) The call whose reply was lost last time: its usage is returned now.
        if self._unconfirmed is not None:
            await self._send(added)
        # (1) Ours, delivered before a crash or restart and never applied.
        start = "0"
        while True:
            resp: Any = await self.client.xreadgroup(
                self.group, self.consumer, {self.stream: start}, count=self.batch_size
            )
            messages = resp[0][1] if resp else []
            if not messages:
                break
            await self._apply(messages, added)
            start = _s(messages[-1][0])
            if len(messages) < self.batch_size:
                break
        # (2) A dead consumer's.
        if self.claim_idle_s is not None:
            cursor = "0-0"
            while True:
                claimed: Any = await self.client.xautoclaim(
                    self.stream,
                    self.group,
                    self.consumer,
                    min_idle_time=int(self.claim_idle_s * 1000),
                    start_id=cursor,
                    count=self.batch_size,
                )
                cursor = _s(claimed[0])
                if claimed[1]:
                    await self._apply(claimed[1], added)
                if cursor in ("0-0", "0"):
                    break
        # (3) New.
        block = block_ms
        while True:
            resp = await self.client.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: ">"},
                count=self.batch_size,
                block=block,
            )
            messages = resp[0][1] if resp else []
            if not messages:
                break
            await self._apply(messages, added)
            block = None

    async def _apply(self, messages: list[Any], added: dict[tuple[str, str], list[int]]) -> None:
        args: list[Any] = [
            self.group,
            int(time.time() * 1000),
            int(self.dedupe_ttl_s * 1000),
            self.consumer,
            secrets.token_hex(8),
        ]
        decoded: list[tuple[str, str, int, int] | None] = []
        for msg_id, fields in messages:
            try:
                if not fields:
                    raise KeyError("entry trimmed")
                tenant, operation, units, count, batch = decode_entry(fields)
            except (KeyError, ValueError):
                # Unreadable (or trimmed before it was read): acknowledged, never billed.
                log.warning("metering: unreadable entry %s in %s skipped", _s(msg_id), self.stream)
                args += (msg_id, "", "", 0, 0)
                decoded.append(None)
                continue
            args += (msg_id, batch, json.dumps([tenant, operation]), units, count)
            decoded.append((tenant, operation, units, count))
        self._unconfirmed = (args, decoded)
        await self._send(added)

    async def _send(self, added: dict[tuple[str, str], list[int]]) -> None:
        """Run the unconfirmed apply call; a lost reply is retried with the same token.

        The script ran or it did not; a retry with the same token returns the flags of
        the run whose reply was lost (and applies nothing twice), so the usage it applied
        is returned by this call - or, when every retry fails, by the next one.
        """
        assert self._unconfirmed is not None
        args, decoded = self._unconfirmed
        units_key, count_key, processed_key = self._keys
        keys = [self.stream, units_key, count_key, processed_key, self._receipts]
        for attempt in range(_APPLY_ATTEMPTS):
            try:
                flags = _s(await self._script(keys=keys, args=args))
                break
            except (RedisConnectionError, RedisTimeoutError, OSError):
                if attempt == _APPLY_ATTEMPTS - 1:
                    raise  # kept in _unconfirmed: the next consume() sends it again
                await asyncio.sleep(0.05 * 2**attempt)
        self._unconfirmed = None
        for entry, ok in zip(decoded, flags, strict=True):
            if entry is None or ok != "1":
                continue
            tenant, operation, units, count = entry
            slot = added.setdefault((tenant, operation), [0, 0])
            slot[0] += units
            slot[1] += count

    async def totals(self) -> dict[tuple[str, str], UsageTotal]:
        """Everything the group has applied (its bill), per (tenant, operation)."""
        units_key, count_key, _ = self._keys
        units: Any = await self.client.hgetall(units_key)
        counts: Any = await self.client.hgetall(count_key)
        out: dict[tuple[str, str], UsageTotal] = {}
        for field, value in units.items():
            tenant, operation = json.loads(_s(field))
            out[(tenant, operation)] = UsageTotal(
                tenant, operation, int(value), int(counts.get(field, 0))
            )
        return out


async def read_usage(
    client: aioredis.Redis,
    stream: str = REDIS_METERING_STREAM,
    *,
    group: str | None = None,
    consumer: str = "reader",
    batch_size: int = 10_000,
) -> dict[tuple[str, str], UsageTotal]:
    """Read a metering stream and return usage totals per (tenant, operation).

    Without ``group`` the whole stream is summed (``XRANGE``), each batch once. With
    ``group``, a :class:`UsageConsumer` applies what the group has not applied yet
    and the usage added by this call is returned: every event is returned by exactly
    one call, across calls, redeliveries and lost replies (retried inside the call).
    A call that raises may still have applied usage it could not confirm: the group's
    ledger (:meth:`UsageConsumer.totals`) counts it; keep one :class:`UsageConsumer`
    to have the next call return it.
    """
    if group is not None:
        reader = UsageConsumer(
            client, stream, group=group, consumer=consumer, batch_size=batch_size
        )
        return await reader.consume()
    entries: list[dict[Any, Any]] = []
    start = "-"
    while True:
        chunk: Any = await client.xrange(stream, min=start, max="+", count=batch_size)
        if not chunk:
            break
        entries.extend(fields for _, fields in chunk)
        last = _s(chunk[-1][0])
        start = "(" + last
        if len(chunk) < batch_size:
            break
    return sum_entries(entries)
