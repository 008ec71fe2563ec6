"""Reading usage back, each event once: :class:`UsageConsumer` and :func:`read_usage`.

**Idempotent consumption.** :class:`UsageConsumer` reads with a consumer group and
applies each entry with a script that, atomically, acknowledges it (only an entry
still pending for the group counts), checks a record of processed
``(batch, tenant, operation)`` kept for ``dedupe_ttl_s``, and adds it to the group's
ledger hashes. Entries delivered before a crash are re-read by the restarted consumer
(its own pending entries) or claimed from a dead one (``XAUTOCLAIM``), and counted
once. A lost reply of the apply script is retried with the same call token, and Redis
answers with the outcome of the run that happened (``{stream}:billed:{group}:receipts``
keeps each consumer's last one), so what it applied is returned by a call too.
:func:`read_usage` without a group sums the whole stream, also dropping repeated
batches. The writing side is :mod:`antifragile.inprocess.metering`; the entry format
is :mod:`antifragile.inprocess.usage_stream`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from antifragile.constants import REDIS_METERING_STREAM
from antifragile.inprocess.usage_stream import (
    UsageTotal,
    check_int,
    check_seconds,
    decode_entry,
    sum_entries,
    text,
)

log = logging.getLogger("antifragile.inprocess.metering")  # one log for metering

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

MAX_ENTRIES_PER_CALL = 100_000
"""Default limit of stream entries one :meth:`UsageConsumer.consume` call reads."""

DEDUPE_TTL_S = 7 * 24 * 3600.0
"""Default time a consumer group remembers an applied (batch, tenant, operation)."""


def ledger_keys(stream: str, group: str) -> tuple[str, str, str]:
    """``(units, count, processed)`` keys of a consumer group's ledger on ``stream``."""
    prefix = f"{stream}:billed:{group}"
    return f"{prefix}:units", f"{prefix}:count", f"{prefix}:processed"


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
        max_entries_per_call: Stream entries one :meth:`consume` call reads at most
            (the rest is left for the next call), so a call returns while writers keep
            adding entries. Default :data:`MAX_ENTRIES_PER_CALL` (100,000).

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
        max_entries_per_call: int = MAX_ENTRIES_PER_CALL,
    ) -> None:
        check_int("UsageConsumer", "batch_size", batch_size, 1)
        check_int("UsageConsumer", "max_entries_per_call", max_entries_per_call, 1)
        if claim_idle_s is not None:
            check_seconds("UsageConsumer", "claim_idle_s", claim_idle_s, zero_ok=True)
        # 0 (or NaN) would forget every applied batch at once: a duplicate billed twice.
        check_seconds("UsageConsumer", "dedupe_ttl_s", dedupe_ttl_s)
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.batch_size = batch_size
        self.claim_idle_s = claim_idle_s
        self.dedupe_ttl_s = dedupe_ttl_s
        self.max_entries_per_call = max_entries_per_call
        self._left = 0  # entries the running consume() may still read
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

        A call reads at most ``max_entries_per_call`` entries: under a steady stream of
        new entries it returns, and the next call goes on where it stopped. Calls on
        one object run one at a time. When Redis fails after this call applied
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
            self._left = self.max_entries_per_call
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
        while self._left > 0:
            count = min(self.batch_size, self._left)
            resp: Any = await self.client.xreadgroup(
                self.group, self.consumer, {self.stream: start}, count=count
            )
            messages = resp[0][1] if resp else []
            if not messages:
                break
            await self._apply(messages, added)
            start = text(messages[-1][0])
            if len(messages) < count:
                break
        # (2) A dead consumer's.
        if self.claim_idle_s is not None:
            cursor = "0-0"
            while self._left > 0:
                claimed: Any = await self.client.xautoclaim(
                    self.stream,
                    self.group,
                    self.consumer,
                    min_idle_time=int(self.claim_idle_s * 1000),
                    start_id=cursor,
                    count=min(self.batch_size, self._left),
                )
                cursor = text(claimed[0])
                if claimed[1]:
                    await self._apply(claimed[1], added)
                if cursor in ("0-0", "0"):
                    break
        # (3) New, up to this call's limit: writers may keep adding entries for ever.
        block = block_ms
        while self._left > 0:
            resp = await self.client.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: ">"},
                count=min(self.batch_size, self._left),
                block=block,
            )
            messages = resp[0][1] if resp else []
            if not messages:
                break
            await self._apply(messages, added)
            block = None

    async def _apply(self, messages: list[Any], added: dict[tuple[str, str], list[int]]) -> None:
        self._left -= len(messages)
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
                log.warning(
                    "metering: unreadable entry %s in %s skipped", text(msg_id), self.stream
                )
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
                flags = text(await self._script(keys=keys, args=args))
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
            tenant, operation = json.loads(text(field))
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
    ``group``, a :class:`UsageConsumer` applies what the group has not applied yet (at
    most :data:`MAX_ENTRIES_PER_CALL` entries per call) and the usage added by this call
    is returned: every event is returned by exactly one call, across calls,
    redeliveries and lost replies (retried inside the call).
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
        last = text(chunk[-1][0])
        start = "(" + last
        if len(chunk) < batch_size:
            break
    return sum_entries(entries)
