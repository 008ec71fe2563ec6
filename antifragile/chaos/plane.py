"""The Redis fault plane: leases the controller writes, and the subscriber every process runs.

Controller side (:class:`FaultPlane`, used by activities and the CLI):

- ``af:fault:{experiment_id}`` holds the :class:`~antifragile.models.chaos.FaultSpec` as
  JSON, written with ``SET … PX ttl``; the workflow renews it every third of the TTL.
  ``af:faults:index`` lists the experiment ids, so readers never SCAN the keyspace.
  Each write, renewal and removal is also published on ``af:faults``.
- ``af:halt`` is the fleet-wide halt switch: while it exists no fault applies anywhere
  and nothing may inject.
- ``af:chaos:{experiment_id}:affected`` / ``:seen`` / ``:refused`` (hashes, field =
  instance), ``:breakers`` (set) and ``:openings`` (hash, field = ``instance/target:
  STATE``, value = times opened) hold what the call sites counted.

Service side (:class:`FaultSubscriber`): keeps the process's
:class:`~antifragile.fault_table.FaultTable` in step with the leases. It loads the
current leases on start, follows the channel, and re-reads the leases every
``resync_interval_s`` (so a missed message is repaired; a re-read overtaken by a halt,
resume, install or removal message is not applied, so it can never undo one). Each
installed fault carries a local expiry (now + the lease's remaining TTL) that only a
renewal seen by this process extends: when Redis, the worker or the workflow is gone, the
fault is dropped by the process itself when its lease would have expired — on a timer,
and on the next call at the latest. Nothing here runs on the call path; the guard only
reads its fault attribute.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from antifragile.aio import cancel_and_wait
from antifragile.chaos.faults import ChaosFault, ImpactStats, build_fault
from antifragile.chaos.logic import instance_selected
from antifragile.constants import (
    REDIS_FAULT_CHANNEL,
    REDIS_FAULT_KEY_PREFIX,
    REDIS_HALT_KEY,
    REDIS_HEALTH_KEY_PREFIX,
)
from antifragile.errors import AntifragileError
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


class FaultTableLike(Protocol):
    """The part of :class:`~antifragile.fault_table.FaultTable` the subscriber uses."""

    def install(self, target: str, fault: Any) -> None:
        """Activate ``fault`` for ``target``."""

    def remove(self, target: str) -> Any:
        """Deactivate ``target``'s fault."""

    def get(self, target: str) -> Any:
        """``target``'s active fault, if any."""


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
        """Lowest health over the snapshots ``af:health:{instance}`` of the processes
        that guard any of ``targets``.

        A snapshot is JSON (a string key, or a hash with a ``snapshot``/``score``
        field). Two scores come out of it: the process's own health score (what the
        health guard compares, see :func:`snapshot_process_score`) and the score of the
        targets' breakers alone (closed 1, half-open 0.5, open 0: what recovery
        verification waits for, see :func:`snapshot_score`).
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


_STATE_SCORE = {"CLOSED": 1.0, "HALF_OPEN": 0.5, "OPEN": 0.0, "FORCED_OPEN": 0.0}


@dataclass
class FleetHealth:
    """What :meth:`FaultPlane.fleet_health` found.

    Attributes:
        score: Lowest process health score among processes guarding a target (None:
            nobody reports).
        instances: How many processes reported.
        detail: Which process was lowest, or why there is no score.
        targets_score: Lowest score of the targets' own breakers (None: no process
            publishes per-breaker states).
    """

    score: float | None = None
    instances: int = 0
    detail: str = ""
    targets_score: float | None = None


def snapshot_process_score(data: dict[str, Any], targets: list[str]) -> float | None:
    """The health score of one process, if it guards any of ``targets`` (else None).

    This is the number the health guard compares with ``abort_below_health``: the
    process's aggregate (weighted over all its breakers), as the runtime publishes it
    and as the bridge signals it. Breaking the target is the experiment's purpose; the
    guard is there for the damage beyond it. A snapshot without an overall score falls
    back to the targets' breakers.
    """
    targets_score = snapshot_score(data, targets)
    has_details = any(isinstance(data.get(f), dict) for f in ("circuit_details", "breakers"))
    if has_details and targets_score is None:
        return None  # this process does not guard a target
    score = data.get("health_score", data.get("score"))
    if score is None:
        return targets_score
    try:
        return max(0.0, min(1.0, float(score)))
    except (TypeError, ValueError):
        return targets_score


def snapshot_score(data: dict[str, Any], targets: list[str]) -> float | None:
    """Health score of one process's snapshot for ``targets`` (None: not reported).

    With per-breaker states (``circuit_details`` as the runtime publishes them, or
    ``breakers``), only the targets' breakers count; a process guarding none of them
    says nothing. Without them, the overall ``health_score`` (or ``score``) counts.
    """
    for field in ("circuit_details", "breakers"):
        breakers = data.get(field)
        if not isinstance(breakers, dict):
            continue
        states = []
        for t in targets:
            entry = breakers.get(t)
            state = entry.get("state") if isinstance(entry, dict) else entry
            if isinstance(state, str) and state.upper() in _STATE_SCORE:
                states.append(_STATE_SCORE[state.upper()])
        return sum(states) / len(states) if states else None
    score = data.get("health_score", data.get("score"))
    try:
        return None if score is None else max(0.0, min(1.0, float(score)))
    except (TypeError, ValueError):
        return None


# --- service side --------------------------------------------------------------------


class FaultSubscriber:
    """Keeps a process's fault table in step with the Redis leases (see module doc).

    Args:
        table: The process's fault table.
        redis_url: The fault plane's Redis.
        instance_id: This process's name (instance selection, impact counters).
        resync_interval_s: How often the leases are re-read. Default 1.0.
        flush_interval_s: How often impact counters are published. Default 0.5.
        rng: Random source for injection rates (seed it in tests).
        clock: Monotonic clock for lease expiry.
    """

    def __init__(
        self,
        table: FaultTableLike,
        redis_url: str,
        *,
        instance_id: str,
        resync_interval_s: float = 1.0,
        flush_interval_s: float = 0.5,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.instance_id = instance_id
        self.resync_interval_s = resync_interval_s
        self.flush_interval_s = flush_interval_s
        self.halted = False
        self.connected = False
        self.faults: dict[str, ChaosFault] = {}
        self._stats: dict[str, ImpactStats] = {}
        self._url = redis_url
        self._rng = rng or random.Random()
        self._clock = clock
        self._redis: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: dict[str, asyncio.TimerHandle] = {}
        # Experiments removed on purpose: a stale read (a resync racing a removal) must
        # never bring one back. Experiment ids are never reused. Remembered for
        # REMOVED_MEMORY_S (at most REMOVED_MAX ids), so a service that lives for months
        # does not keep every id it ever saw: id -> when it was removed (clock).
        self._removed: OrderedDict[str, float] = OrderedDict()
        # Counts messages that change the plane (not renewals): a resync applies what it
        # read only if none arrived meanwhile.
        self._epoch = 0

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Load the current leases and follow the plane in background tasks."""
        self._redis = aioredis.from_url(self._url, socket_connect_timeout=1.0, socket_timeout=2.0)
        with contextlib.suppress(RedisError, OSError):
            await self.resync()
        self._tasks = [
            asyncio.create_task(self._listen(), name="af-fault-listen"),
            asyncio.create_task(self._resync_loop(), name="af-fault-resync"),
            asyncio.create_task(self._flush_loop(), name="af-fault-flush"),
        ]

    async def stop(self) -> None:
        """Stop following, drop every fault locally, publish the last counts."""
        await cancel_and_wait(self._tasks)
        self._tasks = []
        for experiment_id in list(self.faults):
            self._drop(experiment_id, "subscriber stopped")
        with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(self.flush(), 2.0)
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.aclose()
            self._redis = None

    async def __aenter__(self) -> FaultSubscriber:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- reconciling ------------------------------------------------------------------

    async def resync(self) -> None:
        """Re-read halt switch and leases from Redis and reconcile the local table."""
        assert self._redis is not None
        plane = FaultPlane(self._redis)
        epoch = self._epoch
        halt = await plane.halt_status()
        leases = await plane.active_leases()
        now = time.time()
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(INSTANCES_KEY, {self.instance_id: now})
        pipe.zremrangebyscore(INSTANCES_KEY, 0, now - 24 * 3600)  # forget long-gone processes
        await pipe.execute()
        self.connected = True
        if self._epoch != epoch:
            # A halt, resume, install or removal was applied while this read was under
            # way: the read may predate it (a halt undone, a dropped fault reinstalled, a
            # new fault taken for a removed one). The next resync reconciles.
            return
        self._set_halted(halt.halted)
        for experiment_id in list(self.faults):
            if experiment_id not in leases:
                self._forget_removed(experiment_id)
                self._drop(experiment_id, "lease gone")
        self._prune_removed()
        for spec, pttl_ms in leases.values():
            self._apply_lease(spec, pttl_ms)

    def _apply_lease(self, spec: FaultSpec, ttl_ms: int) -> None:
        """Install or refresh one lease seen with ``ttl_ms`` left."""
        if self.halted or spec.experiment_id in self._removed:
            return
        if not instance_selected(
            self.instance_id, spec.experiment_id, spec.instances, spec.instance_fraction
        ):
            return
        expires_at = self._clock() + ttl_ms / 1000.0
        fault = self.faults.get(spec.experiment_id)
        if fault is not None and fault.spec == spec.model_copy(
            update={"ttl_ms": fault.spec.ttl_ms}
        ):
            fault.expires_at = max(fault.expires_at, expires_at)
            return
        if fault is not None:
            self._drop(spec.experiment_id, "lease changed")
        stats = self._stats.setdefault(spec.experiment_id, ImpactStats())
        fault = build_fault(
            spec,
            expires_at=expires_at,
            on_expired=lambda f: self._drop(f.spec.experiment_id, "lease expired"),
            stats=stats,
            rng=self._rng,
            clock=self._clock,
        )
        self.faults[spec.experiment_id] = fault
        for target in spec.blast_radius:
            try:
                self.table.install(target, fault)
            except Exception:
                log.exception("chaos %s: installing on %s failed", spec.experiment_id, target)
        self._arm_timer(spec.experiment_id)
        log.info(
            "chaos %s: %s fault installed on %s",
            spec.experiment_id,
            spec.chaos_type,
            ", ".join(spec.blast_radius),
        )

    def _forget_removed(self, experiment_id: str) -> None:
        """Remember that ``experiment_id`` was removed on purpose (for a while)."""
        self._removed[experiment_id] = self._clock()
        self._removed.move_to_end(experiment_id)
        self._prune_removed()

    def _prune_removed(self) -> None:
        horizon = self._clock() - REMOVED_MEMORY_S
        while self._removed:
            oldest, at = next(iter(self._removed.items()))
            if at > horizon and len(self._removed) <= REMOVED_MAX:
                break
            del self._removed[oldest]

    @property
    def removed_remembered(self) -> int:
        """How many removed experiment ids are remembered now (bounded; for tests)."""
        return len(self._removed)

    def _renew_local(self, experiment_id: str, ttl_ms: int) -> None:
        fault = self.faults.get(experiment_id)
        if fault is not None:
            fault.expires_at = max(fault.expires_at, self._clock() + ttl_ms / 1000.0)

    def _drop(self, experiment_id: str, why: str) -> None:
        """Remove an experiment's fault from every target of this process; idempotent."""
        fault = self.faults.pop(experiment_id, None)
        timer = self._timers.pop(experiment_id, None)
        if timer is not None:
            timer.cancel()
        if fault is None:
            return
        for target in fault.spec.blast_radius:
            if self.table.get(target) is fault:
                self.table.remove(target)
        log.info("chaos %s: fault removed locally (%s)", experiment_id, why)

    def _set_halted(self, halted: bool) -> None:
        if halted and not self.halted:
            log.warning("chaos halt switch set: dropping every fault")
            for experiment_id in list(self.faults):
                self._drop(experiment_id, "halt switch")
        self.halted = halted

    def _arm_timer(self, experiment_id: str) -> None:
        fault = self.faults.get(experiment_id)
        if fault is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, fault.expires_at - self._clock())
        self._timers[experiment_id] = loop.call_later(delay, self._check_expiry, experiment_id)

    def _check_expiry(self, experiment_id: str) -> None:
        self._timers.pop(experiment_id, None)
        fault = self.faults.get(experiment_id)
        if fault is None:
            return
        if self._clock() >= fault.expires_at:
            self._drop(experiment_id, "lease expired unrenewed")
        else:
            self._arm_timer(experiment_id)  # renewed meanwhile: check again at the new expiry

    def handle_message(self, raw: str | bytes) -> None:
        """Apply one message of the ``af:faults`` channel."""
        try:
            msg = json.loads(raw)
            op = msg.get("op")
            if op in ("install", "remove", "halt", "resume"):
                self._epoch += 1
            if op == "install":
                spec = FaultSpec.model_validate(msg["spec"])
                self._apply_lease(spec, spec.ttl_ms)
            elif op == "renew":
                self._renew_local(str(msg["experiment_id"]), int(msg["ttl_ms"]))
            elif op == "remove":
                self._forget_removed(str(msg["experiment_id"]))
                self._drop(str(msg["experiment_id"]), "lease removed")
            elif op == "halt":
                self._set_halted(True)
            elif op == "resume":
                self._set_halted(False)
        except (ValueError, KeyError, TypeError, ValidationError, AttributeError):
            log.warning("ignoring malformed fault-plane message %r", raw[:200])

    # --- background tasks -------------------------------------------------------------

    async def _listen(self) -> None:
        backoff = 0.2
        while True:
            pubsub = None
            try:
                client = aioredis.from_url(
                    self._url, socket_connect_timeout=1.0, socket_timeout=None
                )
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(REDIS_FAULT_CHANNEL)
                # Subscribed: anything published from here on is seen; repair the gap.
                await self.resync()
                backoff = 0.2
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self.handle_message(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, AssertionError) as exc:
                self.connected = False
                log.debug("fault plane unreachable (%s); local expiry stays in force", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
                    with contextlib.suppress(Exception):
                        await client.aclose()

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_interval_s)
            try:
                await self.resync()
            except (RedisError, OSError) as exc:
                self.connected = False
                log.debug("fault plane resync failed: %s", exc)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.flush()
            except (RedisError, OSError) as exc:
                log.debug("impact flush failed: %s", exc)

    async def flush(self) -> None:
        """Publish counted calls and breaker openings since the last flush, batched."""
        if self._redis is None or not self._stats:
            return
        pipe = self._redis.pipeline(transaction=False)
        pending: list[tuple[ImpactStats, int, int, set[str]]] = []
        counted: list[tuple[ImpactStats, int, dict[str, int]]] = []  # refused, openings
        inst = self.instance_id
        for experiment_id, stats in list(self._stats.items()):
            seen, affected = stats.seen, stats.affected
            d_seen, d_aff = seen - stats.flushed_seen, affected - stats.flushed_affected
            new_breakers = stats.breakers - stats.flushed_breakers
            if d_seen:
                pipe.hincrby(impact_key(experiment_id, "seen"), inst, d_seen)
                pipe.expire(impact_key(experiment_id, "seen"), IMPACT_KEY_TTL_S)
            if d_aff:
                pipe.hincrby(impact_key(experiment_id, "affected"), inst, d_aff)
                pipe.expire(impact_key(experiment_id, "affected"), IMPACT_KEY_TTL_S)
            if new_breakers:
                key = impact_key(experiment_id, "breakers")
                pipe.sadd(key, *(f"{inst}/{b}" for b in sorted(new_breakers)))
                pipe.expire(key, IMPACT_KEY_TTL_S)
            refused = stats.refused
            d_ref = refused - stats.flushed_refused
            if d_ref:
                pipe.hincrby(impact_key(experiment_id, "refused"), inst, d_ref)
                pipe.expire(impact_key(experiment_id, "refused"), IMPACT_KEY_TTL_S)
            d_open = stats.openings_to_flush()
            if d_open:
                key = impact_key(experiment_id, "openings")
                for opened, times in sorted(d_open.items()):
                    pipe.hincrby(key, f"{inst}/{opened}", times)
                pipe.expire(key, IMPACT_KEY_TTL_S)
            if d_ref or d_open:
                counted.append((stats, refused, dict(stats.openings)))
            if d_seen or d_aff or new_breakers or d_ref or d_open:
                pending.append((stats, seen, affected, set(stats.breakers)))
            elif experiment_id not in self.faults:
                del self._stats[experiment_id]  # removed and fully published
        if not pending:
            return
        await pipe.execute()
        for stats, seen, affected, breakers in pending:
            stats.flushed_seen, stats.flushed_affected = seen, affected
            stats.flushed_breakers = breakers
        for stats, refused, openings in counted:
            stats.flushed_refused, stats.flushed_openings = refused, openings

    # --- inspection -------------------------------------------------------------------

    def active(self) -> dict[str, FaultSpec]:
        """Experiments whose fault this process enforces now."""
        return {k: f.spec for k, f in self.faults.items()}
