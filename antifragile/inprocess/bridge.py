"""Bridge: breaker and health changes of this process into Temporal and Redis.

Nothing here runs on the call path. A breaker transition calls :meth:`Bridge.notify`,
which only updates a small dict holding the latest intent per service (bounded by the
number of guarded services) and wakes a background task. That task:

* on OPEN asks for the service's recovery through the recovery orchestrator
  (:func:`~antifragile.recovery.client.request_recovery`: joins a running
  ``recovery-{service}``, else queues it), using the guard's configured
  :class:`~antifragile.models.recovery.RecoveryRequest`;
* on CLOSED signals ``health_changed`` (healthy) to ``recovery-{service}`` so a waiting
  recovery probes at once (a missing or finished workflow is fine);
* on every change signals ``health_changed`` to running chaos experiments whose blast
  radius includes the service: their target (``AfService`` of
  ``AfKind="chaos" AND ExecutionStatus="Running"``, listed at most every
  ``chaos_cache_s``) or another member, read from their fault lease in Redis.

Temporal unreachable: the intent stays in the dict (a newer one for the same service
replaces it), the task retries with exponential backoff, and the service keeps working.

A flapping breaker (OPEN → HALF_OPEN → OPEN … every ``open_duration_s``) must not turn
into a stream of Temporal calls: each call costs the service's event loop 0.3–1 ms of
CPU (request building, payload conversion, the response), which lands in the latency of
whatever the loop serves. So after a round that delivered, the next round waits until
``min_interval_s`` has passed; changes arriving meanwhile merge into the pending intent
(latest state wins, an unsent recovery request is kept), so a flapping breaker costs at
most one round per interval and the first change after a quiet period goes out at once.

A recovery request normally goes to the service's intake, which forwards it to the
orchestrator: the intakes keep a storm from many processes a few signals to the
orchestrator, at the price of a workflow task and a forward activity (on a quiet dev
server about 15 ms of the ~70 ms from breaker to the recovery's first activity, see
``bench/bridge.py``). So the first request fleet-wide in a quiet second skips the
intake: the bridge takes a token in Redis (``SET NX`` with a TTL of
``direct_interval_s``, one key per task queue), and only its holder signals the
orchestrator directly; every other request, and every request while Redis does not
answer within 50 ms, takes the intake. However many processes report at once, the
orchestrator gets at most one direct signal a second besides the intakes' batches.

A second task publishes this process's health report to Redis under
``af:health:{instance}`` with a TTL, every ``publish_interval_s`` and within
``publish_coalesce_s`` of a health change (a burst of changes is one write), so
``antifragile health`` shows the whole fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from antifragile.constants import (
    KIND_CHAOS,
    REDIS_HEALTH_KEY_PREFIX,
    SIGNAL_HEALTH_CHANGED,
    recovery_workflow_id,
)
from antifragile.fleet_health import publish_snapshot, withdraw_snapshot
from antifragile.inprocess._aio import cancel_and_wait
from antifragile.inprocess.breaker_state import CircuitState, StateChange
from antifragile.inprocess.health import HealthAggregator
from antifragile.models.common import HealthChangedSignal
from antifragile.models.recovery import RecoveryRequest
from antifragile.orchestrator.client import request_recovery
from antifragile.settings import Settings

log = logging.getLogger(__name__)

DIRECT_TOKEN_KEY = "af:bridge:direct:{task_queue}"
"""Redis key of the fleet-wide token to skip the intake (value: the holder's instance)."""
DIRECT_TOKEN_TIMEOUT_S = 0.05
"""Longest wait for the token; a slower Redis sends the request through the intake."""
DIRECT_OFF_S = 30.0
"""After Redis failed to answer, every request takes the intake for this long."""

ClientFactory = Callable[[], Awaitable[Client]]
RecoveryLookup = Callable[[str], RecoveryRequest | None]

# Errors that retrying cannot fix: drop the intent (logged) instead of looping.
_PERMANENT = {
    RPCStatusCode.INVALID_ARGUMENT,
    RPCStatusCode.PERMISSION_DENIED,
    RPCStatusCode.UNAUTHENTICATED,
    RPCStatusCode.UNIMPLEMENTED,
}


@dataclass(slots=True)
class _Intent:
    """What still has to be told to Temporal about one service (latest wins)."""

    recover: bool = False
    closed: bool = False
    healthy: bool = True
    state: CircuitState = CircuitState.CLOSED
    opened_at: float | None = None
    """Wall-clock time (epoch seconds) the breaker opened for the pending ``recover``."""

    def merge_older(self, older: _Intent) -> None:
        """Keep an older, unsent recover/closed request unless this newer one overrides it."""
        if not (self.recover or self.closed):
            self.recover, self.closed = older.recover, older.closed
            self.opened_at = older.opened_at


def health_key(instance_id: str) -> str:
    """Redis key of an instance's health snapshot: ``af:health:{instance}``."""
    return f"{REDIS_HEALTH_KEY_PREFIX}{instance_id}"


class Bridge:
    """Background link from in-process health to recovery/chaos workflows and Redis.

    Args:
        settings: Task queue and connection settings.
        instance_id: Name of this process (``source`` of signals, health key suffix).
        health: The process's aggregator (score/status travel with every signal).
        recovery_for: Returns the recovery request of a service, or None.
        client: A connected Temporal client; else ``client_factory`` (default: connect
            with ``settings``) is called lazily, with backoff, in the background.
        redis_client: Where health snapshots go; None disables publishing.
        publish_interval_s: Seconds between health snapshots. Default 3.
        health_ttl_s: TTL of a snapshot. Default 15.
        chaos_cache_s: How long a list of running chaos experiments is reused. Default 2.
        initial_backoff_s / max_backoff_s: Retry spacing while Temporal fails.
            Defaults 0.2 and 10.
        min_interval_s: Least time from a round of Temporal calls that delivered to the
            next round; changes meanwhile are merged. Default 1.0.
        publish_coalesce_s: How long the publisher waits after a health change before
            writing, so a burst of changes is one snapshot. Default 0.5.
        recover_on_forced_open: Start recovery for FORCED_OPEN too (normally a forced
            open is deliberate: chaos or an operator). Default False.
        direct_interval_s: Fleet-wide, at most one recovery request per this many
            seconds skips the intake (a token in ``redis_client``); None sends every
            request through the intakes. Default 1.0.
        snapshot_extras: Returns keys added to every health snapshot (the runtime adds
            ``traffic``, see :mod:`antifragile.fleet_health`). Default none.
        sleep: Injectable sleep for tests.
        wall_clock: Wall-clock time in epoch seconds (the time a breaker opened, sent as
            the recovery request's ``detected_at``). Default ``time.time``.
    """

    def __init__(
        self,
        settings: Settings,
        instance_id: str,
        health: HealthAggregator,
        recovery_for: RecoveryLookup,
        *,
        client: Client | None = None,
        client_factory: ClientFactory | None = None,
        redis_client: aioredis.Redis | None = None,
        publish_interval_s: float = 3.0,
        health_ttl_s: float = 15.0,
        chaos_cache_s: float = 2.0,
        initial_backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
        min_interval_s: float = 1.0,
        publish_coalesce_s: float = 0.5,
        recover_on_forced_open: bool = False,
        direct_interval_s: float | None = 1.0,
        snapshot_extras: Callable[[], dict[str, Any]] | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.instance_id = instance_id
        self.health = health
        self._recovery_for = recovery_for
        self._client = client
        self._client_factory = client_factory
        self._redis = redis_client
        self.publish_interval_s = publish_interval_s
        self.health_ttl_s = health_ttl_s
        self.chaos_cache_s = chaos_cache_s
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.min_interval_s = min_interval_s
        self.publish_coalesce_s = publish_coalesce_s
        self.recover_on_forced_open = recover_on_forced_open
        self.direct_interval_s = direct_interval_s
        self._direct_off_until = 0.0
        """Monotonic time before which no token is tried (Redis failed to answer)."""
        self.direct_requests = 0
        """Recovery requests that skipped the intake (held the fleet-wide token)."""
        self._sleep = sleep
        self._wall = wall_clock
        self._snapshot_extras = snapshot_extras
        self._intents: dict[str, _Intent] = {}
        self._wake: asyncio.Event | None = None
        self._publish_wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._chaos_running: dict[str, str] = {}
        """Running chaos experiment id -> its target, as last listed."""
        self._chaos_listed_at: float | None = None
        self._chaos_blast: dict[str, frozenset[str]] = {}
        """Running chaos experiment id -> its blast radius (from its fault lease)."""
        self._chaos_listing_broken = False
        self.failures = 0
        """Temporal operations that failed and were retried (for tests and metrics)."""
        self.recoveries_started = 0
        """Recovery start-or-join calls that succeeded."""
        self.last_error = ""

    # ------------------------------------------------------------------ inputs (sync, O(1))

    def notify(self, change: StateChange) -> None:
        """Breaker listener: record the latest intent for the service and wake the task."""
        intent = self._intents.get(change.name)
        if intent is None:
            intent = self._intents[change.name] = _Intent()
        new = change.new
        if new is CircuitState.OPEN or (
            new is CircuitState.FORCED_OPEN and self.recover_on_forced_open
        ):
            if not intent.recover:  # the first opening not yet told is when it began
                intent.opened_at = self._wall()
            intent.recover, intent.closed = True, False
        elif new is CircuitState.CLOSED:
            intent.recover, intent.closed = False, True
        intent.state = new
        intent.healthy = new is CircuitState.CLOSED
        if self._wake is not None:
            self._wake.set()
        self.health_changed()

    def health_changed(self, *_: object) -> None:
        """Ask the publisher to write a fresh snapshot soon."""
        if self._publish_wake is not None:
            self._publish_wake.set()

    @property
    def pending(self) -> dict[str, CircuitState]:
        """Services with an intent not yet delivered, and their latest state."""
        return {name: i.state for name, i in self._intents.items()}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the Temporal and Redis background tasks."""
        if self._tasks:
            return
        self._wake = asyncio.Event()
        self._publish_wake = asyncio.Event()
        if self._intents:
            self._wake.set()
        self._tasks.append(asyncio.create_task(self._temporal_loop(), name="af-bridge-temporal"))
        if self._redis is not None:
            self._tasks.append(asyncio.create_task(self._publish_loop(), name="af-bridge-health"))

    async def stop(self, *, remove_snapshot: bool = True) -> None:
        """Stop the tasks; deliver what is pending if Temporal answers within 2 s."""
        if self._intents and self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain_once(), 2.0)
        await cancel_and_wait(self._tasks)
        self._tasks = []
        self._wake = self._publish_wake = None
        if remove_snapshot and self._redis is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(withdraw_snapshot(self._redis, self.instance_id), 1.0)

    # ------------------------------------------------------------------ Temporal

    async def _get_client(self) -> Client:
        if self._client is None:
            if self._client_factory is not None:
                self._client = await self._client_factory()
            else:
                from antifragile.temporal_client import connect

                self._client = await connect(self.settings)
        return self._client

    async def _temporal_loop(self) -> None:
        assert self._wake is not None
        backoff = self.initial_backoff_s
        delivered_at: float | None = None
        while True:
            await self._wake.wait()
            if delivered_at is not None:
                # Spacing after a delivered round (see the module docstring); a real
                # sleep, not ``self._sleep``, which paces retries only.
                wait = delivered_at + self.min_interval_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            self._wake.clear()
            had_intents = bool(self._intents)
            if await self._drain_once():
                if had_intents:
                    delivered_at = time.monotonic()
                backoff = self.initial_backoff_s
            else:
                await self._sleep(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)
                self._wake.set()

    async def _drain_once(self) -> bool:
        """Deliver every pending intent once; False if any failed and was kept."""
        all_ok = True
        for name in list(self._intents):
            intent = self._intents.pop(name, None)
            if intent is None:
                continue
            try:
                await self._deliver(name, intent)
            except RPCError as exc:
                if exc.status in _PERMANENT:
                    log.error("bridge: %s for %r dropped: %s", exc.status.name, name, exc)
                    continue
                self._keep(name, intent, exc)
                all_ok = False
            except Exception as exc:  # unreachable server, timeouts, connect errors
                self._keep(name, intent, exc)
                all_ok = False
        return all_ok

    def _keep(self, name: str, intent: _Intent, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
        if self.failures == 1 or self.failures % 50 == 0:
            log.warning(
                "bridge: Temporal call for %r failed (%s); will retry", name, self.last_error
            )
        newer = self._intents.get(name)
        if newer is None:
            self._intents[name] = intent
        else:
            newer.merge_older(intent)

    async def _deliver(self, name: str, intent: _Intent) -> None:
        client = await self._get_client()
        report = self.health.get_system_health()
        if intent.recover:
            request = self._recovery_for(name)
            if request is not None and intent.opened_at is not None:
                opened = datetime.fromtimestamp(intent.opened_at, UTC)
                request = request.model_copy(update={"detected_at": opened})
            if request is None:
                log.info("bridge: breaker %r opened; no recovery configured (no probe)", name)
            else:
                # Through the fleet-wide queue, so a shared outage is no recovery storm.
                direct = await self._take_direct_token()
                await request_recovery(
                    client,
                    request,
                    task_queue=self.settings.task_queue,
                    want_position=False,
                    direct=direct,
                )
                self.direct_requests += direct
                self.recoveries_started += 1
            intent.recover = False  # delivered: a retry of the rest must not repeat it
        signal = HealthChangedSignal(
            service=name,
            healthy=intent.healthy,
            score=round(report.health_score, 6),
            status=report.status.value,
            source=self.instance_id,
        )
        if intent.closed:
            handle = client.get_workflow_handle(recovery_workflow_id(name))
            try:
                await handle.signal(SIGNAL_HEALTH_CHANGED, signal)
            except RPCError as exc:
                if exc.status is not RPCStatusCode.NOT_FOUND:
                    raise
            intent.closed = False
        for workflow_id in await self._running_chaos(client, name):
            try:
                await client.get_workflow_handle(workflow_id).signal(SIGNAL_HEALTH_CHANGED, signal)
            except RPCError as exc:
                if exc.status is not RPCStatusCode.NOT_FOUND:
                    raise

    async def _take_direct_token(self) -> bool:
        """True when this request holds the fleet-wide token to skip the intake.

        Never waits long: Redis that does not answer within
        :data:`DIRECT_TOKEN_TIMEOUT_S` sends this request, and those of the next
        :data:`DIRECT_OFF_S`, through the intake (which is always safe).
        """
        if self._redis is None or self.direct_interval_s is None:
            return False
        if time.monotonic() < self._direct_off_until:
            return False
        key = DIRECT_TOKEN_KEY.format(task_queue=self.settings.task_queue)
        try:
            taken = await asyncio.wait_for(
                self._redis.set(
                    key,
                    self.instance_id,
                    nx=True,
                    px=max(1, round(self.direct_interval_s * 1000)),
                ),
                DIRECT_TOKEN_TIMEOUT_S,
            )
        except Exception:  # unreachable, slow or failing Redis: the intake it is
            self._direct_off_until = time.monotonic() + DIRECT_OFF_S
            return False
        return bool(taken)

    async def _running_chaos(self, client: Client, name: str) -> list[str]:
        """Running chaos experiments whose blast radius includes ``name``.

        One visibility query lists every running experiment with its target
        (``AfService``), reused for ``chaos_cache_s`` by every service. The other members
        of a blast radius are read from the experiment's fault lease in Redis and
        remembered while the experiment runs, so a change during recovery verification
        (after the lease is gone) still reaches it.
        """
        if self._chaos_listing_broken:
            return []
        now = time.monotonic()
        if self._chaos_listed_at is None or now - self._chaos_listed_at >= self.chaos_cache_s:
            query = f'AfKind="{KIND_CHAOS}" AND ExecutionStatus="Running"'
            running: dict[str, str] = {}
            try:
                async for wf in client.list_workflows(query, limit=1000):
                    target = wf.search_attributes.get("AfService")
                    running[wf.id] = str(target[0] if isinstance(target, list) and target else "")
            except RPCError as exc:
                if exc.status is RPCStatusCode.INVALID_ARGUMENT:
                    # Search attributes not registered on this server: no chaos to notify.
                    log.warning("bridge: cannot list chaos experiments (%s); skipping", exc)
                    self._chaos_listing_broken = True
                    return []
                raise
            await self._learn_blast_radius(running)
            self._chaos_running, self._chaos_listed_at = running, now
        return sorted(
            wid
            for wid, target in self._chaos_running.items()
            if target == name or name in self._chaos_blast.get(wid, ())
        )

    async def _learn_blast_radius(self, running: dict[str, str]) -> None:
        """Remember the blast radius of running experiments from their leases in Redis."""
        # Bounded: only experiments still running are remembered.
        self._chaos_blast = {k: v for k, v in self._chaos_blast.items() if k in running}
        if self._redis is None or all(k in self._chaos_blast for k in running):
            return
        from antifragile.chaos.plane import FaultPlane

        try:
            leases = await asyncio.wait_for(FaultPlane(self._redis).active_leases(), 1.0)
        except Exception as exc:  # Redis down: the targets still get their signals
            log.debug("bridge: fault leases not read (%s)", exc)
            return
        for wid, (spec, _) in leases.items():
            if wid in running:
                self._chaos_blast[wid] = frozenset(spec.blast_radius)

    # ------------------------------------------------------------------ Redis snapshots

    def snapshot(self) -> dict[str, Any]:
        """The JSON document published under ``af:health:{instance}``."""
        report = self.health.get_system_health()
        doc = report.model_dump(mode="json")
        doc["instance"] = self.instance_id
        doc["pid"] = os.getpid()
        doc["published_at"] = time.time()
        doc["ttl_s"] = self.health_ttl_s
        if self._snapshot_extras is not None:
            doc.update(self._snapshot_extras())
        return doc

    async def publish_once(self) -> None:
        """Write the snapshot with its TTL (raises if Redis fails)."""
        assert self._redis is not None
        await publish_snapshot(
            self._redis, self.instance_id, json.dumps(self.snapshot()), self.health_ttl_s
        )

    async def _publish_loop(self) -> None:
        assert self._publish_wake is not None
        failed = 0
        while True:
            try:
                await self.publish_once()
                failed = 0
            except Exception as exc:
                failed += 1
                if failed == 1:
                    log.warning("bridge: health snapshot to Redis failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._publish_wake.wait(), self.publish_interval_s)
            self._publish_wake.clear()
            # Coalesce a burst of changes into one write.
            await asyncio.sleep(self.publish_coalesce_s)
