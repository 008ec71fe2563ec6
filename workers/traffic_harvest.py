"""The traffic harvester: the fleet's finished traffic windows into the ledgers.

Every runtime publishes, in its health snapshot, the last finished traffic window of each
dependency (:mod:`antifragile.inprocess.traffic`, format in :mod:`antifragile.fleet_health`).
After each window ends and a grace period passes (so that every instance has rotated and
published), the harvester reads every snapshot, **coalesces** the windows per
``(dependency, window start)`` across instances - calls, failures and breaker openings
summed, latency histograms merged bucket by bucket - and sends one
:class:`~antifragile.models.learning.TrafficObservation` per dependency and window to
``profile-{dependency}`` with :func:`antifragile.learning.client.record_observations`.

**Where it runs: a background task of the worker process**, next to the activities,
rather than a Temporal Schedule running an activity. A window lives in Redis only until
the next one ends, so harvesting must happen in the short span between "window end +
grace" and "next window end": a background task sleeps to that instant; a schedule's
action (start workflow → activity task → poll) adds seconds of latency and one workflow
history per window (1,440 a day at 60 s windows) for no durable state worth keeping -
the ledger is the durable state, and it de-duplicates. Each worker process runs one
harvester; several workers (or a restarted one) send the same coalesced window with the
same ``source_id`` (the window start, ISO), and the ledger keeps the first per
``(kind, source_id)``: no double count. A harvester sends a window only when it is
complete (see :func:`harvestable`), since the first one the ledger receives wins.

**Outages.** Redis not answering: the harvest of that window is skipped (a window no
longer in Redis cannot be recovered), one warning is logged until Redis answers again.
Temporal refusing: the coalesced windows are kept (at most :data:`MAX_PENDING`) and sent
again at the next window; one warning until it succeeds. A ledger Temporal refuses for
good (:data:`REFUSED_FOR_GOOD`: a dependency name too long for a workflow id) has its
windows dropped with a warning, and the other dependencies are still sent. Nothing
raises out of the loop.

**Under fault.** Calls made while a chaos fault was installed are published apart
(``under_fault``) and are never sent. A window in which *any* instance had a fault on a
dependency is left out for that dependency entirely: the calls made without the fault
ran while the dependency was under an experiment, so they are not baseline either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

import redis
import redis.asyncio as aioredis
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from antifragile.fleet_health import fault_windows, finished_traffic, read_snapshots
from antifragile.inprocess._aio import cancel_and_wait
from antifragile.learning.client import record_observations
from antifragile.learning.histogram import merge
from antifragile.models.learning import TrafficObservation
from antifragile.settings import DEFAULT_HARVEST_GRACE_S, DEFAULT_TRAFFIC_WINDOW_S

log = logging.getLogger("antifragile.traffic_harvest")

MAX_PENDING = 1000
"""Coalesced windows kept for a retry while Temporal refuses (the oldest dropped first)."""

REFUSED_FOR_GOOD = frozenset(
    {RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.NOT_FOUND}
)
"""Temporal answers that sending again cannot change (the windows are dropped, counted in
``rejected``); any other error keeps them for the next window."""

MAX_SENT_REMEMBERED = 10_000
"""``(dependency, window start)`` already sent, remembered to skip re-sending (bounded)."""

WindowKey = tuple[str, datetime, float]


def coalesce(observations: Iterable[TrafficObservation]) -> list[TrafficObservation]:
    """One observation per ``(dependency, window start, window length)``.

    Calls, failures and breaker openings are summed, latency histograms merged
    (:func:`antifragile.learning.histogram.merge`); ``source_id`` is the window start in
    ISO format, the same whichever harvester computed it. Sorted by (dependency, start).
    """
    groups: dict[WindowKey, list[TrafficObservation]] = {}
    for o in observations:
        groups.setdefault((o.dependency, o.window_start, o.window_s), []).append(o)
    out = []
    for (dependency, start, window_s), group in sorted(groups.items()):
        out.append(
            TrafficObservation(
                dependency=dependency,
                source_id=start.isoformat(),
                window_start=start,
                window_s=window_s,
                calls=sum(o.calls for o in group),
                failures=sum(o.failures for o in group),
                breaker_openings=sum(o.breaker_openings for o in group),
                latency=merge(o.latency for o in group),
            )
        )
    return out


def harvestable(observation: TrafficObservation, now: float, grace_s: float) -> bool:
    """Whether a finished window can be sent at Unix time ``now``: complete and current.

    ``end + grace_s <= now < end + window_s``: every instance has had ``grace_s`` to
    rotate and publish it, and none has moved on to the next one yet (a snapshot holds
    only the last finished window, so later some instances' share would be missing).
    """
    start = observation.window_start.timestamp()
    end = start + observation.window_s
    return end + grace_s <= now < end + observation.window_s


class Harvest(NamedTuple):
    """What one harvest sends, and what it leaves out.

    Attributes:
        windows: The coalesced windows to send.
        under_fault: Coalesced windows left out: a fault was installed in them.
        other_length: Instances' windows left out: their length is not the fleet's.
    """

    windows: list[TrafficObservation]
    under_fault: int
    other_length: int = 0


def windows_to_send(
    snapshots: Iterable[dict[str, object]],
    now: float,
    grace_s: float,
    window_s: float | None = None,
) -> Harvest:
    """The coalesced windows of ``snapshots`` to send at ``now`` (see :class:`Harvest`).

    Instances' windows that are not :func:`harvestable` are ignored; a (dependency,
    window) that any instance reports a fault in is left out (see the module doc).

    Args:
        snapshots: The runtimes' health snapshots.
        now: Unix time, seconds.
        grace_s: See :func:`harvestable`.
        window_s: The fleet's window length, seconds (the harvester's). A window of
            another length (an instance configured apart) is left out and counted: it
            cannot be summed with the fleet's windows, would share their ``source_id``
            when it starts with one (the ledger keeps only the first), and overlaps
            them otherwise. None: every length (compared exactly).
    """
    faulted: set[tuple[str, datetime]] = set()
    windows: list[TrafficObservation] = []
    other_length = 0
    for snapshot in snapshots:
        data = dict(snapshot)
        for dependency, start in fault_windows(data):
            with contextlib.suppress(ValueError):
                faulted.add((dependency, _utc(datetime.fromisoformat(start))))
        for o in finished_traffic(data):
            if window_s is not None and o.window_s != window_s:
                other_length += 1
            elif harvestable(o, now, grace_s):
                windows.append(o)
    coalesced = coalesce(windows)
    kept = [o for o in coalesced if (o.dependency, _utc(o.window_start)) not in faulted]
    return Harvest(kept, len(coalesced) - len(kept), other_length)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def next_wake(now: float, window_s: float, grace_s: float) -> float:
    """The next instant ``k × window_s + grace_s`` (Unix s) strictly after ``now``."""
    k = (now - grace_s) // window_s + 1
    return k * window_s + grace_s


@dataclass
class HarvestStats:
    """What a harvester did (for tests and logs).

    Attributes:
        harvests: Harvests that read Redis.
        sent: Coalesced windows the ledgers accepted (signals sent).
        under_fault: Windows left out because a fault was installed in them.
        redis_errors: Harvests skipped because Redis did not answer.
        temporal_errors: Sends that Temporal refused (kept for the next window).
        other_length: Instances' windows left out: not the harvester's ``window_s`` long.
        rejected: Windows Temporal refused for good (:data:`REFUSED_FOR_GOOD`), dropped.
    """

    harvests: int = 0
    sent: int = 0
    under_fault: int = 0
    redis_errors: int = 0
    temporal_errors: int = 0
    other_length: int = 0
    rejected: int = 0
    sent_ids: list[str] = field(default_factory=list)


class TrafficHarvester:
    """Harvests the fleet's finished traffic windows into the ledgers (see the module doc).

    Args:
        client: Temporal client with the pydantic data converter.
        redis_url: Redis holding the health snapshots.
        task_queue: Where a ledger that does not exist yet is started.
        window_s: The runtimes' ``traffic_window_s``, seconds (> 0); the harvester wakes
            once per window. Default :data:`~antifragile.settings.DEFAULT_TRAFFIC_WINDOW_S`
            (a worker passes its ``Settings.traffic_window_s``).
        grace_s: Seconds after each window's end before harvesting (0 <= grace < window);
            more than the runtimes' ``publish_interval_s``. Default
            :data:`~antifragile.settings.DEFAULT_HARVEST_GRACE_S` (a worker passes its
            ``Settings.harvest_grace_s``).
        wall: Unix-time clock.

    Raises:
        ValueError: ``window_s`` or ``grace_s`` out of range (the message names it).
    """

    def __init__(
        self,
        client: Client,
        redis_url: str,
        task_queue: str,
        *,
        window_s: float = DEFAULT_TRAFFIC_WINDOW_S,
        grace_s: float = DEFAULT_HARVEST_GRACE_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0 (got {window_s!r})")
        if not 0 <= grace_s < window_s:
            raise ValueError(f"grace_s must be >= 0 and < window_s {window_s} (got {grace_s!r})")
        self._client = client
        self._redis_url = redis_url
        self.task_queue = task_queue
        self.window_s = window_s
        self.grace_s = grace_s
        self._wall = wall
        self.stats = HarvestStats()
        self._pending: dict[tuple[str, str], TrafficObservation] = {}
        self._sent: dict[tuple[str, str], None] = {}
        self._redis_down = False
        self._temporal_down = False
        self._other_length_logged = False
        self._task: asyncio.Task[None] | None = None
        self.harvested = asyncio.Event()
        """Set after every harvest (tests wait on it, then clear it)."""

    async def harvest_once(self) -> None:
        """Read the snapshots now, coalesce, and send (never raises but on cancellation)."""
        redis_client = aioredis.Redis.from_url(
            self._redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        try:
            snapshots = await read_snapshots(redis_client)
        except (redis.RedisError, OSError) as exc:
            self.stats.redis_errors += 1
            if not self._redis_down:
                log.warning("traffic harvest: Redis did not answer (%s); next window", exc)
            self._redis_down = True
            snapshots = None
        finally:
            with contextlib.suppress(Exception):
                await redis_client.aclose()
        if snapshots is not None:
            if self._redis_down:
                log.info("traffic harvest: Redis answers again")
            self._redis_down = False
            self.stats.harvests += 1
            harvest = windows_to_send(snapshots, self._wall(), self.grace_s, self.window_s)
            self.stats.under_fault += harvest.under_fault
            self.stats.other_length += harvest.other_length
            if harvest.other_length and not self._other_length_logged:
                self._other_length_logged = True
                log.warning(
                    "traffic harvest: %d instance window(s) not %g s long left out "
                    "(a runtime's traffic_window_s differs from the fleet's)",
                    harvest.other_length,
                    self.window_s,
                )
            for o in harvest.windows:
                key = (o.dependency, o.source_id)
                if key not in self._sent:
                    self._pending[key] = o
            while len(self._pending) > MAX_PENDING:
                del self._pending[next(iter(self._pending))]
        await self._send()
        self.harvested.set()

    async def _send(self) -> None:
        by_dependency: dict[str, list[TrafficObservation]] = {}
        for o in self._pending.values():
            by_dependency.setdefault(o.dependency, []).append(o)
        for dependency, observations in sorted(by_dependency.items()):
            try:
                await record_observations(
                    self._client, dependency, observations, task_queue=self.task_queue
                )
            except (RPCError, ValueError) as exc:
                if isinstance(exc, ValueError) or exc.status in REFUSED_FOR_GOOD:
                    # This ledger will never take them (an id over the server's limit):
                    # dropped, and the other dependencies are still sent.
                    self._drop(dependency, observations, exc)
                    continue
                self._temporal_unavailable(exc)
                return
            except (RuntimeError, OSError) as exc:
                self._temporal_unavailable(exc)
                return
            if self._temporal_down:
                log.info("traffic harvest: Temporal takes the windows again")
            self._temporal_down = False
            for o in observations:
                key = (o.dependency, o.source_id)
                del self._pending[key]
                self._sent[key] = None
                self.stats.sent += 1
                self.stats.sent_ids.append(f"{o.dependency}/{o.source_id}")
            while len(self._sent) > MAX_SENT_REMEMBERED:
                del self._sent[next(iter(self._sent))]

    def _temporal_unavailable(self, exc: BaseException) -> None:
        self.stats.temporal_errors += 1
        if not self._temporal_down:
            log.warning("traffic harvest: Temporal refused (%s); retried next window", exc)
        self._temporal_down = True

    def _drop(
        self, dependency: str, observations: list[TrafficObservation], exc: BaseException
    ) -> None:
        self.stats.rejected += len(observations)
        log.warning(
            "traffic harvest: %d window(s) of %.80s refused for good, dropped (%s)",
            len(observations),
            dependency,
            exc,
        )
        for o in observations:
            key = (o.dependency, o.source_id)
            del self._pending[key]
            self._sent[key] = None  # never harvested again

    async def start(self) -> None:
        """Harvest at every window end + grace, in a background task."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="af-traffic-harvest")

    async def stop(self) -> None:
        """Stop harvesting (a harvest in progress is cancelled)."""
        if self._task is not None:
            # Repeated cancels: a Redis or Temporal client that swallows one must not
            # hang the worker's shutdown.
            await cancel_and_wait([self._task])
            self._task = None

    async def _loop(self) -> None:
        while True:
            now = self._wall()
            await asyncio.sleep(max(0.0, next_wake(now, self.window_s, self.grace_s) - now))
            try:
                await self.harvest_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # never crash the worker; the next window tries again
                log.exception("traffic harvest failed; next window")
