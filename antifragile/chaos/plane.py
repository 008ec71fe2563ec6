"""The Redis fault plane, controller side: the leases and the halt switch it writes.

:class:`FaultPlane` (used by activities and the chaos client) keeps these keys:

- ``af:fault:{experiment_id}`` holds the :class:`~antifragile.models.chaos.FaultSpec` as
  JSON, written with ``SET … PX ttl``; the workflow renews it every third of the TTL.
  ``af:faults:index`` lists the experiment ids, so readers never SCAN the keyspace.
  Each write, renewal and removal is also published on ``af:faults``.
- ``af:halt`` is the fleet-wide halt switch: while it exists no fault applies anywhere
  and nothing may inject.
- ``af:chaos:{experiment_id}:affected`` / ``:seen`` / ``:refused`` (hashes, field =
  instance), ``:breakers`` (set) and ``:openings`` (hash, field = ``instance/target:
  STATE``, value = times opened) hold what the call sites counted.

The service side, which follows these leases in every process, is
:mod:`antifragile.inprocess.fault_subscriber`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from antifragile.constants import (
    REDIS_FAULT_CHANNEL,
    REDIS_FAULT_KEY_PREFIX,
    REDIS_HALT_KEY,
    REDIS_HEALTH_KEY_PREFIX,
)
from antifragile.errors import AntifragileError
from antifragile.fleet_health import (
    FleetHealth,
    snapshot_process_score,
    snapshot_score,
    target_calls,
)
from antifragile.models.chaos import FaultSpec, HaltStatus

log = logging.getLogger(__name__)

INDEX_KEY = "af:faults:index"
"""Set of experiment ids that wrote a lease: lets readers find leases without SCAN.

Members whose lease expired are pruned lazily by the readers that find them gone."""

INSTANCES_KEY = "af:chaos:instances"
"""Sorted set: instance id → last time (epoch s) its subscriber was seen."""

IMPACT_KEY_TTL_S = 7 * 24 * 3600
"""Impact counters outlive the experiment by a week, for late reports."""

INSTANCE_MAX_AGE_S = 30.0
"""An instance not seen for this long is not offered for instance_count selection."""

REMOVED_MEMORY_S = 300.0
"""How long a subscriber remembers an experiment removed on purpose. A stale read can
only be one started before the removal (a resync, bounded by its socket timeout of 2 s,
or a message published before it): minutes are ample, and memory stays bounded."""

REMOVED_MAX = 10_000
"""At most this many removed ids are remembered (the oldest are forgotten first)."""


def fault_key(experiment_id: str) -> str:
    """Redis key of an experiment's fault lease."""
    return f"{REDIS_FAULT_KEY_PREFIX}{experiment_id}"


def impact_key(experiment_id: str, what: str) -> str:
    """Redis key of an experiment's impact counters (``affected``, ``seen``, ``breakers``)."""
    return f"af:chaos:{experiment_id}:{what}"


_INJECT_SCRIPT = """
-- KEYS: halt switch, lease index, this lease. ARGV: experiment id, lease JSON, TTL ms,
-- lease key prefix, blast-radius targets...
if redis.call('EXISTS', KEYS[1]) == 1 then return {'halted'} end
local mine = {}
for i = 5, #ARGV do mine[ARGV[i]] = true end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if id ~= ARGV[1] then
    local raw = redis.call('GET', ARGV[4] .. id)
    if raw then
      local ok, other = pcall(cjson.decode, raw)
      if ok and type(other) == 'table' and type(other['blast_radius']) == 'table' then
        for _, t in ipairs(other['blast_radius']) do
          if mine[t] then return {'conflict', id, t} end
        end
      end
    else
      redis.call('SREM', KEYS[2], id)
    end
  end
end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
return {'ok'}
"""
"""Atomic injection (Redis runs a script alone): halt check, conflict check, write.

The other leases are read through the index rather than declared as keys: fine on a
single Redis (the fault plane's), which is what this module supports."""


class FaultConflictError(AntifragileError):
    """Another experiment's lease already covers a target of this blast radius."""


def _decode(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


# --- controller side -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RenewOutcome:
    """What a renewal found."""

    renewed: bool
    halted: bool = False
    missing: bool = False


@dataclass(frozen=True, slots=True)
class Impact:
    """Counters an experiment's call sites published."""

    affected: dict[str, int]
    seen: dict[str, int]
    breakers: list[str]
    openings: dict[str, int] = dataclasses.field(default_factory=dict)
    """``instance/target: STATE`` -> times opened (at least 1 for each of ``breakers``)."""
    refused: dict[str, int] = dataclasses.field(default_factory=dict)
    """Calls refused by the guard (breaker open, concurrency limit) per instance."""


class FaultPlane:
    """Write, renew and remove fault leases; read and flip the halt switch.

    Args:
        client: An asyncio Redis client (``decode_responses`` either way).
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._r = client

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 5.0) -> FaultPlane:
        """A plane on a new client for ``url``."""
        return cls(
            aioredis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        )

    async def close(self) -> None:
        """Close the client."""
        await self._r.aclose()

    async def _publish(self, message: dict[str, Any]) -> None:
        await self._r.publish(REDIS_FAULT_CHANNEL, json.dumps(message))

    # --- halt switch ------------------------------------------------------------------

    async def halt_status(self) -> HaltStatus:
        """The halt switch as it is now."""
        raw = _decode(await self._r.get(REDIS_HALT_KEY))
        if raw is None:
            return HaltStatus(halted=False)
        try:
            data = json.loads(raw)
            return HaltStatus(
                halted=True,
                reason=str(data.get("reason", "")),
                by=str(data.get("by", "")),
                at=data.get("at"),
            )
        except (ValueError, AttributeError, ValidationError):
            return HaltStatus(halted=True, reason=raw)

    async def set_halt(self, reason: str, by: str = "") -> None:
        """Set the halt switch: every process drops its faults; nothing may inject."""
        data = {"reason": reason, "by": by, "at": datetime.now(UTC).isoformat()}
        await self._r.set(REDIS_HALT_KEY, json.dumps(data))
        await self._publish({"op": "halt", "reason": reason})

    async def clear_halt(self) -> bool:
        """Clear the halt switch; True when it was set."""
        existed = bool(await self._r.delete(REDIS_HALT_KEY))
        await self._publish({"op": "resume"})
        return existed

    # --- leases -----------------------------------------------------------------------

    async def active_leases(self) -> dict[str, tuple[FaultSpec, int]]:
        """Every live lease: experiment id → (spec, remaining TTL in ms)."""
        # An index set instead of SCAN: each process resyncs every second, and SCAN
        # would walk the whole keyspace of a shared Redis each time.
        ids = sorted(str(_decode(m)) for m in await self._r.smembers(INDEX_KEY))
        if not ids:
            return {}
        keys = [fault_key(i) for i in ids]
        pipe = self._r.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
            pipe.pttl(key)
        values = await pipe.execute()
        leases: dict[str, tuple[FaultSpec, int]] = {}
        gone: list[str] = []
        for i, key in enumerate(keys):
            raw, pttl = _decode(values[2 * i]), values[2 * i + 1]
            if raw is None or pttl is None or pttl < 0:
                gone.append(ids[i])  # expired (-2); a key without TTL is never written
                continue
            try:
                spec = FaultSpec.model_validate_json(raw)
            except ValidationError:
                log.warning("ignoring malformed fault lease %s", _decode(key))
                continue
            leases[spec.experiment_id] = (spec, int(pttl))
        if gone:
            await self._r.srem(INDEX_KEY, *gone)
        return leases

    async def inject(self, spec: FaultSpec) -> bool:
        """Write (or rewrite, idempotently) the lease of ``spec`` and publish it.

        Returns:
            False when the halt switch is set (nothing written), else True.

        Raises:
            FaultConflictError: another experiment's lease covers a target of this one.
        """
        # One script: the halt check, the conflict check over every live lease and the
        # write happen atomically, so two experiments injecting on one target at the
        # same moment cannot both pass (a check-then-set from the client could).
        result = await self._r.eval(
            _INJECT_SCRIPT,
            3,
            REDIS_HALT_KEY,
            INDEX_KEY,
            fault_key(spec.experiment_id),
            spec.experiment_id,
            spec.model_dump_json(),
            spec.ttl_ms,
            REDIS_FAULT_KEY_PREFIX,
            *spec.blast_radius,
        )
        verdict = [str(_decode(v)) for v in result]
        if verdict[0] == "halted":
            return False
        if verdict[0] == "conflict":
            raise FaultConflictError(
                f"experiment {verdict[1]} already injects a fault on {verdict[2]}; "
                "one fault per target at a time"
            )
        await self._publish({"op": "install", "spec": spec.model_dump(mode="json")})
        return True

    async def renew(self, experiment_id: str, ttl_ms: int) -> RenewOutcome:
        """Reset the lease's TTL (never recreates a lease that is gone).

        Refused while the halt switch is set: a halted fleet lets leases run out.
        """
        if (await self.halt_status()).halted:
            return RenewOutcome(renewed=False, halted=True)
        if not await self._r.pexpire(fault_key(experiment_id), ttl_ms):
            return RenewOutcome(renewed=False, missing=True)
        await self._publish({"op": "renew", "experiment_id": experiment_id, "ttl_ms": ttl_ms})
        return RenewOutcome(renewed=True)

    async def remove(self, experiment_id: str) -> bool:
        """Delete the lease and tell every process; idempotent. True when it existed."""
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(fault_key(experiment_id))
        pipe.srem(INDEX_KEY, experiment_id)
        existed = bool((await pipe.execute())[0])
        await self._publish({"op": "remove", "experiment_id": experiment_id})
        return existed

    async def lease_ttl_ms(self, experiment_id: str) -> int | None:
        """Remaining TTL of a lease in ms, None when there is none."""
        pttl = await self._r.pttl(fault_key(experiment_id))
        return int(pttl) if pttl is not None and pttl >= 0 else None

    # --- fleet ------------------------------------------------------------------------

    async def known_instances(self, max_age_s: float = INSTANCE_MAX_AGE_S) -> list[str]:
        """Instances whose subscriber was seen within ``max_age_s``."""
        members = await self._r.zrangebyscore(INSTANCES_KEY, time.time() - max_age_s, "+inf")
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def instance_snapshots(self, instances: list[str]) -> dict[str, dict[str, Any] | None]:
        """Each instance's health snapshot ``af:health:{instance}`` (None: none or unreadable)."""
        return {i: await self._read_snapshot(f"{REDIS_HEALTH_KEY_PREFIX}{i}") for i in instances}

    async def impact(self, experiment_id: str) -> Impact:
        """What the call sites counted for ``experiment_id``."""
        pipe = self._r.pipeline(transaction=False)
        pipe.hgetall(impact_key(experiment_id, "affected"))
        pipe.hgetall(impact_key(experiment_id, "seen"))
        pipe.smembers(impact_key(experiment_id, "breakers"))
        pipe.hgetall(impact_key(experiment_id, "openings"))
        pipe.hgetall(impact_key(experiment_id, "refused"))
        affected, seen, breakers, openings, refused = await pipe.execute()

        def ints(h: dict[Any, Any]) -> dict[str, int]:
            return {str(_decode(k)): int(v) for k, v in h.items()}

        opened = sorted(str(_decode(b)) for b in breakers)
        counted = ints(openings)
        for b in opened:  # published by a process that counts no openings: once at least
            counted.setdefault(b, 1)
        return Impact(ints(affected), ints(seen), opened, counted, ints(refused))

    async def fleet_health(self, targets: list[str]) -> FleetHealth:
        """Lowest health over the snapshots of the processes that guard any of ``targets``.

        Each process's snapshot is ``af:health:{instance}``. A snapshot is JSON (a string
        key, or a hash with a ``snapshot``/``score`` field). Two scores come out of it: the
        process's own health score (what the health guard compares, see
        :func:`snapshot_process_score`) and the score of the targets' breakers alone (closed
        1, half-open 0.5, open 0: what recovery verification waits for, see
        :func:`snapshot_score`).
        """
        keys = [k async for k in self._r.scan_iter(match=f"{REDIS_HEALTH_KEY_PREFIX}*", count=500)]
        out = FleetHealth()
        lowest_at = ""
        for key in keys:
            data = await self._read_snapshot(key)
            if data is None:
                continue
            score = snapshot_process_score(data, targets)
            if score is None:
                continue
            out.instances += 1
            out.calls += target_calls(data, targets)
            if out.score is None or score < out.score:
                out.score = score
                lowest_at = str(_decode(key)).removeprefix(REDIS_HEALTH_KEY_PREFIX)
            targets_score = snapshot_score(data, targets)
            if targets_score is not None and (
                out.targets_score is None or targets_score < out.targets_score
            ):
                out.targets_score = targets_score
        if out.score is None:
            out.detail = "no process publishes health for these targets"
        else:
            out.detail = f"lowest {out.score:.2f} at {lowest_at} ({out.instances} reporting)"
            if out.targets_score is not None:
                out.detail += f"; targets' breakers {out.targets_score:.2f}"
        return out

    async def _read_snapshot(self, key: Any) -> dict[str, Any] | None:
        try:
            kind = _decode(await self._r.type(key))
            if kind == "string":
                raw = _decode(await self._r.get(key))
                data = json.loads(raw) if raw else None
            elif kind == "hash":
                h = {str(_decode(k)): _decode(v) for k, v in (await self._r.hgetall(key)).items()}
                snap = h.get("snapshot")
                data = json.loads(snap) if snap else dict(h)
            else:
                return None
        except (ValueError, RedisError):
            return None
        return data if isinstance(data, dict) else None
