"""The metering stream's contract, shared by its writer and its readers.

Entry format (all values are strings, as Redis stores them), one entry per
(tenant, operation) of a batch, written by :data:`WRITE_BATCH_LUA`::

    tenant     tenant id
    operation  operation name
    units      sum of the units of the aggregated events
    count      number of aggregated events
    instance   instance id of the writer
    batch      "{instance}:{nonce}:{sequence}" - the same for every entry of one batch

What a writer may write is what a reader accepts (:func:`valid_item`,
:data:`MAX_ENTRY_VALUE`); :func:`sum_entries` sums entries, each batch once. Every key
derives from the stream name, so on Redis Cluster a hash-tagged stream name
(``{af}:metering``) keeps them in one slot. The settings checks of both sides
(:func:`check_int`, :func:`check_seconds`) live here too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from antifragile.errors import ConfigError

log = logging.getLogger("antifragile.inprocess.metering")  # one log for metering


def check_int(owner: str, name: str, value: object, minimum: int) -> None:
    """Refuse a setting that is not an int >= ``minimum`` with one line naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{owner}.{name}: must be an integer >= {minimum} (got {value!r})")


def check_seconds(owner: str, name: str, value: object, *, zero_ok: bool = False) -> None:
    """Refuse a duration that is not a finite number > 0 (>= 0 with ``zero_ok``).

    NaN passes every ``<`` test and would silently disable a timer or a TTL.
    """
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value >= 0 if zero_ok else value > 0)
    )
    if not ok:
        rule = ">= 0" if zero_ok else "> 0"
        raise ConfigError(f"{owner}.{name}: must be a finite number {rule} (got {value!r})")


# One batch, atomically and at most once per (writer, sequence).
# KEYS[1] stream, KEYS[2] the writer's high-water mark.
# ARGV[1] sequence, ARGV[2] mark TTL (ms), ARGV[3] MAXLEN ('' = none), ARGV[4] instance,
# ARGV[5] batch id, then (tenant, operation, units, count) per entry.
WRITE_BATCH_LUA = """
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
"""Writes one batch atomically, at most once per (writer, sequence): 1 stored, 0 resent."""

WRITER_MARK_TTL_S = 7 * 24 * 3600.0
"""Default lifetime of a writer's high-water mark after its last batch (7 days)."""


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """Summed usage of one (tenant, operation)."""

    tenant_id: str
    operation: str
    units: int
    count: int


def text(value: Any) -> str:
    """A Redis reply value (bytes or str) as text."""
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
    f = {text(k): text(v) for k, v in fields.items()}
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


def valid_item(item: object) -> tuple[str, str, int] | None:
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
