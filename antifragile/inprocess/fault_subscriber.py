"""Service side of the fault plane: keeps a process's fault table in step with the leases.

See :mod:`antifragile.chaos.plane` for the keys and channel the controller writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from antifragile.chaos.logic import instance_selected
from antifragile.chaos.plane import (
    IMPACT_KEY_TTL_S,
    INSTANCES_KEY,
    REMOVED_MAX,
    REMOVED_MEMORY_S,
    FaultPlane,
    impact_key,
)
from antifragile.constants import (
    REDIS_FAULT_CHANNEL,
)
from antifragile.inprocess._aio import cancel_and_wait
from antifragile.inprocess.channel_follower import REDIS_DOWN, follow_channel, resync_every
from antifragile.inprocess.fault_table import FaultTable
from antifragile.inprocess.faults import ChaosFault, ImpactStats, build_fault
from antifragile.models.chaos import FaultSpec

log = logging.getLogger(__name__)


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
        table: FaultTable,
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
        # AssertionError: redis-py raises it on a reply it cannot parse (a proxy cut mid-reply).
        await follow_channel(
            self._url,
            REDIS_FAULT_CHANNEL,
            on_subscribed=self.resync,  # subscribed: anything published is seen; repair the gap
            on_message=self._on_message,
            on_down=self._down,
            errors=(*REDIS_DOWN, AssertionError),
        )

    async def _on_message(self, data: bytes) -> None:
        self.handle_message(data)

    def _down(self, exc: BaseException) -> None:
        self.connected = False
        log.debug("fault plane unreachable (%s); local expiry stays in force", exc)

    async def _resync_loop(self) -> None:
        await resync_every(self.resync_interval_s, self.resync, self._down)

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
