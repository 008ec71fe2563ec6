"""Fault kinds enforced at the call site by a guard (one class per :class:`ChaosType`).

A fault object is built from the :class:`~antifragile.models.chaos.FaultSpec` of a Redis
lease and installed in the process's :class:`~antifragile.inprocess.fault_table.FaultTable` for
every target of the blast radius (the same object for all of them, so resources held
per process are held once). The guard calls :meth:`ChaosFault.apply` before each
guarded call while the fault is installed; no guard outside the blast radius ever sees
it, and a guard with no fault pays nothing.

Every fault carries its lease's local expiry: a call after it passes finds the fault
gone (the plane also removes it on a timer), so a fault outlives a dead controller or
an unreachable Redis by at most the lease TTL.

Injected waits (LATENCY, TIMEOUT) run inside the guard's own timeout, and end early when
the fault leaves the guard (the experiment removed its lease, an emergency stop, the
halt switch) or its lease runs out unrenewed; none lasts longer than
:data:`MAX_INJECTED_WAIT_S`, the hard cap on an experiment's duration. A wait that ends
early lets the call go on to the real dependency: the fault is gone.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from antifragile.inprocess.breaker_state import CircuitOpenError, CircuitState, StateChange
from antifragile.inprocess.guard import ConcurrencyLimitError, Guard
from antifragile.models.chaos import FaultSpec
from antifragile.models.chaos_scenario import (
    HARD_MAX_DURATION_S,
    MEMORY_CAP_MB,
    ChaosType,
    ErrorKind,
    ResourceType,
)

log = logging.getLogger(__name__)

ERROR_CLASSES: dict[ErrorKind, type[Exception]] = {
    ErrorKind.RUNTIME: RuntimeError,
    ErrorKind.CONNECTION: ConnectionError,
    ErrorKind.TIMEOUT: TimeoutError,
    ErrorKind.OS: OSError,
    ErrorKind.VALUE: ValueError,
}
"""Exception raised by an ERROR fault for each :class:`ErrorKind`."""

MEMORY_CHUNK_BYTES = 4 * 1024 * 1024
"""MEMORY exhaustion fills its memory this much at a time, in a thread (see hold_memory)."""

CPU_SLICE_S = 0.01
"""CPU burn works in slices: busy ``level`` of a slice, asleep for the rest."""

MAX_INJECTED_WAIT_S = HARD_MAX_DURATION_S
"""Longest wait a fault injects (seconds): no experiment outlasts it."""

_OPENED = (CircuitState.OPEN, CircuitState.FORCED_OPEN)


class InjectedFault(Exception):
    """Mixed into every exception a fault raises, so tests and logs can tell them apart.

    A circuit breaker counts an injected error as a failure whatever its type (unless
    its ``ignored_exceptions`` lists it): the experiment simulates a failing dependency,
    so a breaker that counts only, say, ``ConnectionError`` must still see an injected
    ``RuntimeError`` fail.
    """

    # The breaker's failure mark (see antifragile.inprocess.breaker_outcomes.count_as_failure).
    _breaker_failure = True


@dataclass
class ImpactStats:
    """Calls seen and affected by one experiment in this process (flushed to Redis).

    Plain integer attributes: incremented on the call path, read and reset by the
    plane's background flush, never locked (one event loop). The ``flushed_*``
    attributes hold what the flush already published (it sends the differences).

    Attributes:
        seen: Calls through a guard of the blast radius while the fault was installed,
            refused ones included.
        affected: Calls the fault changed: injected effects, and calls the guard refused
            because of the fault (a breaker it opened or forced open, concurrency slots
            it holds).
        refused: Calls the guard refused (breaker open or concurrency limit) while the
            fault was installed, whatever opened the breaker.
        breakers: ``target: STATE`` of each breaker that opened (OPEN or FORCED_OPEN) at
            least once; kept for readers of the ``:breakers`` set.
        openings: ``target: STATE`` -> how many times that breaker moved to that state.
            One key per breaker of the blast radius and state, so its size is bounded
            by ``2 * len(blast_radius)`` however often a breaker opens.
    """

    seen: int = 0
    affected: int = 0
    refused: int = 0
    breakers: set[str] = field(default_factory=set)
    openings: dict[str, int] = field(default_factory=dict)
    flushed_seen: int = 0
    flushed_affected: int = 0
    flushed_refused: int = 0
    flushed_breakers: set[str] = field(default_factory=set)
    flushed_openings: dict[str, int] = field(default_factory=dict)

    def count_opening(self, key: str) -> None:
        """Count one opening of ``key`` (``target: STATE``)."""
        self.breakers.add(key)
        self.openings[key] = self.openings.get(key, 0) + 1

    def openings_to_flush(self) -> dict[str, int]:
        """Openings counted since :attr:`flushed_openings` (key -> how many more)."""
        done = self.flushed_openings
        return {k: n - done.get(k, 0) for k, n in self.openings.items() if n > done.get(k, 0)}


_ERROR_TYPES: dict[type[Exception], type[Exception]] = {}


def injected_error(kind: type[Exception], message: str) -> Exception:
    """An exception of type ``kind`` that is also an :class:`InjectedFault`."""
    cls = _ERROR_TYPES.get(kind)
    if cls is None:
        cls = type(f"Injected{kind.__name__}", (kind, InjectedFault), {})
        _ERROR_TYPES[kind] = cls
    return cls(message)


class ChaosFault:
    """Base of every fault kind: expiry, injection rate, counting, blast radius.

    Args:
        spec: The lease this fault enforces.
        expires_at: Monotonic time when the lease runs out unless renewed.
        on_expired: Called (once) when a call finds the lease expired; the plane
            removes the fault from the table.
        stats: Where calls seen/affected are counted.
        rng: Random source of the injection rate (seed it in tests).
        clock: Monotonic clock.
    """

    def __init__(
        self,
        spec: FaultSpec,
        *,
        expires_at: float = float("inf"),
        on_expired: Callable[[ChaosFault], None] | None = None,
        stats: ImpactStats | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.expires_at = expires_at
        self.stats = stats or ImpactStats()
        self._on_expired = on_expired
        self._rng = rng or random.Random()
        self._clock = clock
        self._targets = frozenset(spec.blast_radius)
        self._rate = spec.injection_rate
        self._guards: dict[str, Guard] = {}
        self._listeners: dict[str, Callable[[StateChange], None]] = {}
        # Set when the fault leaves a guard: ends that guard's injected waits.
        self._ended: dict[str, asyncio.Event] = {}
        # Guards whose breaker opened (or was forced open) while this fault was on them:
        # their refusals are the fault's doing.
        self._caused: set[str] = set()
        self.expired = False

    # --- the Fault protocol -----------------------------------------------------------

    async def apply(self, guard: Guard) -> None:
        """Called before each guarded call: decide whether this call is affected."""
        if guard.name not in self._targets:
            return  # never touch a guard outside the blast radius
        if self._clock() >= self.expires_at:
            self._expire()
            return
        stats = self.stats
        stats.seen += 1
        if self._rate < 1.0 and self._rng.random() >= self._rate:
            return
        await self._affect(guard)

    def on_refused(self, guard: Guard, exc: BaseException) -> None:
        """The guard refused a call before :meth:`apply` could run (called by the guard).

        Counts the call as seen and refused; as affected too when the fault is why it
        was refused: the breaker opened (or was forced open) while the fault was on
        this guard, or the fault holds the concurrency slots that are full. A breaker
        already open when the fault arrived refuses calls the fault did not affect.

        Args:
            guard: The guard that refused the call.
            exc: What it raised: ``CircuitOpenError`` or ``ConcurrencyLimitError``.
        """
        if guard.name not in self._targets:
            return
        if self._clock() >= self.expires_at:
            self._expire()
            return
        stats = self.stats
        stats.seen += 1
        stats.refused += 1
        if self._refusal_is_ours(guard, exc):
            stats.affected += 1

    def on_install(self, guard: Guard) -> None:
        """The fault reached ``guard``: watch its breaker, then the kind's own setup."""
        if guard.name not in self._targets:
            return
        self._guards[guard.name] = guard
        self._ended[guard.name] = asyncio.Event()
        breaker = guard.breaker
        stats = self.stats
        name = guard.name
        caused = self._caused

        def watch(change: StateChange) -> None:
            if change.new in _OPENED:
                # Every opening counts (a breaker that opened six times, six):
                # a listener hears each transition, synchronously.
                stats.count_opening(f"{name}: {change.new.value}")
                caused.add(name)

        breaker.on_state_change(watch)
        self._listeners[guard.name] = watch
        try:
            self._install(guard)
        except BaseException:
            # The table drops a fault whose install raised without calling on_remove:
            # undo what was done here, or the listener stays on the breaker for ever.
            self._guards.pop(guard.name, None)
            self._ended.pop(guard.name, None)
            added = self._listeners.pop(guard.name, None)
            if added is not None:
                breaker.remove_listener(added)
            raise

    def on_remove(self, guard: Guard) -> None:
        """The fault left ``guard``: undo the kind's setup, stop watching the breaker."""
        if self._guards.pop(guard.name, None) is None:
            return
        self._caused.discard(guard.name)
        ended = self._ended.pop(guard.name, None)
        if ended is not None:
            ended.set()  # waits in progress on this guard end now
        try:
            self._uninstall(guard)
        finally:
            watch = self._listeners.pop(guard.name, None)
            if watch is not None:
                guard.breaker.remove_listener(watch)

    # --- kinds override these ---------------------------------------------------------

    async def _affect(self, guard: Guard) -> None:
        """What an affected call suffers (default: nothing, counted)."""
        self.stats.affected += 1

    def _refusal_is_ours(self, guard: Guard, exc: BaseException) -> bool:
        """A refused call is affected when the breaker opened under this fault.

        (A concurrency refusal: only when the kind holds slots, see ResourceFault.)
        """
        return isinstance(exc, CircuitOpenError) and guard.name in self._caused

    def _install(self, guard: Guard) -> None:
        """Per-guard setup when installed (default: none)."""

    def _uninstall(self, guard: Guard) -> None:
        """Undo :meth:`_install` (default: none)."""

    # --- helpers ----------------------------------------------------------------------

    async def _hold(self, guard: Guard, seconds: float) -> bool:
        """Wait ``seconds`` (at most :data:`MAX_INJECTED_WAIT_S`) unless the fault ends first.

        Returns:
            True when the whole wait passed; False when the fault left the guard or its
            lease expired first.
        """
        ended = self._ended.get(guard.name)
        if ended is None:
            ended = self._ended[guard.name] = asyncio.Event()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(seconds, 0.0), MAX_INJECTED_WAIT_S)
        while not ended.is_set():
            to_expiry = self.expires_at - self._clock()
            if to_expiry <= 0:
                self._expire()
                return False
            left = deadline - loop.time()
            if left <= 0:
                return True
            try:
                # Wake at the deadline or the lease's expiry (it may have been renewed
                # meanwhile: checked again on waking), whichever comes first.
                async with asyncio.timeout(min(left, to_expiry)):
                    await ended.wait()
            except TimeoutError:
                continue
        return False

    def _expire(self) -> None:
        if not self.expired:
            self.expired = True
            for ended in self._ended.values():
                ended.set()
            log.warning(
                "chaos %s: lease expired unrenewed, fault dropped locally", self.spec.experiment_id
            )
            if self._on_expired is not None:
                self._on_expired(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec.experiment_id} on {sorted(self._targets)}>"


class LatencyFault(ChaosFault):
    """LATENCY: each affected call waits ``latency_ms`` ± ``jitter_ms`` first."""

    async def _affect(self, guard: Guard) -> None:
        spec = self.spec
        delay_ms = float(spec.latency_ms)
        if spec.jitter_ms:
            delay_ms += self._rng.uniform(-spec.jitter_ms, spec.jitter_ms)
        self.stats.affected += 1
        if delay_ms > 0:
            await self._hold(guard, delay_ms / 1000.0)


class ErrorFault(ChaosFault):
    """ERROR: an affected call raises the configured exception with ``error_rate``."""

    def __init__(self, spec: FaultSpec, **kw: Any) -> None:
        super().__init__(spec, **kw)
        self._kind = ERROR_CLASSES[spec.error_kind]
        self._error_rate = spec.error_rate

    async def _affect(self, guard: Guard) -> None:
        if self._error_rate < 1.0 and self._rng.random() >= self._error_rate:
            return
        self.stats.affected += 1
        raise injected_error(
            self._kind, f"chaos {self.spec.experiment_id}: injected error calling {guard.name}"
        )


class TimeoutFault(ChaosFault):
    """TIMEOUT: an affected call hangs until the guard's timeout, then ``TimeoutError``.

    A guard with its own ``timeout_s`` runs the fault inside that timeout, which ends
    the hang with the guard's own ``TimeoutError``; without one the fault hangs
    ``timeout_ms`` and raises. A hang the fault's removal ends lets the call go on.
    """

    async def _affect(self, guard: Guard) -> None:
        self.stats.affected += 1
        if guard.timeout_s:
            await self._hold(guard, MAX_INJECTED_WAIT_S)
            return
        hang_s = self.spec.timeout_ms / 1000.0
        if not await self._hold(guard, hang_s):
            return
        raise injected_error(
            TimeoutError,
            f"chaos {self.spec.experiment_id}: {guard.name} timed out after {hang_s:g}s",
        )


class PartitionFault(ChaosFault):
    """NETWORK_PARTITION: an affected call fails at once with ``ConnectionError``."""

    async def _affect(self, guard: Guard) -> None:
        self.stats.affected += 1
        raise injected_error(
            ConnectionError,
            f"chaos {self.spec.experiment_id}: network partition, {guard.name} unreachable",
        )


class BreakerFault(ChaosFault):
    """CIRCUIT_BREAKER: the guard's breaker is FORCED_OPEN while installed.

    On removal (cleanup, emergency stop, halt switch or lease expiry) the breaker is
    reset to CLOSED, unless someone else forced it open before the experiment.
    """

    def __init__(self, spec: FaultSpec, **kw: Any) -> None:
        super().__init__(spec, **kw)
        self._forced: set[str] = set()

    def _install(self, guard: Guard) -> None:
        breaker = guard.breaker
        if breaker.state is not CircuitState.FORCED_OPEN:
            breaker.force_open(f"chaos {self.spec.experiment_id}")
            self._forced.add(guard.name)

    def _uninstall(self, guard: Guard) -> None:
        breaker = guard.breaker
        if guard.name in self._forced:
            self._forced.discard(guard.name)
            if breaker.state is CircuitState.FORCED_OPEN:
                breaker.reset(f"chaos {self.spec.experiment_id} removed")

    async def _affect(self, guard: Guard) -> None:
        # Reached only if the guard lets calls through its forced-open breaker.
        self.stats.affected += 1


class ResourceFault(ChaosFault):
    """RESOURCE_EXHAUSTION: hold concurrency slots, memory or CPU while installed.

    Memory and CPU are per process: held once, from the first guard installed until
    the last is removed. Connection slots are per guard.
    """

    def __init__(self, spec: FaultSpec, **kw: Any) -> None:
        super().__init__(spec, **kw)
        self._level = spec.resource_level
        self._kind = spec.resource_type or ResourceType.CPU
        self._installed = 0
        self._memory: list[bytearray] = []
        self._memory_stop: threading.Event | None = None
        self._memory_thread: threading.Thread | None = None
        self._cpu_stop: threading.Event | None = None
        self._cpu_thread: threading.Thread | None = None
        self._slot_releases: dict[str, Callable[[], None]] = {}

    @property
    def memory_held_bytes(self) -> int:
        """Bytes of memory this fault holds right now (it grows to the level in a thread)."""
        return sum(len(chunk) for chunk in list(self._memory))

    @property
    def cpu_burning(self) -> bool:
        """True while the CPU burner thread runs."""
        return self._cpu_thread is not None and self._cpu_thread.is_alive()

    def _install(self, guard: Guard) -> None:
        self._installed += 1
        if self._kind is ResourceType.CONNECTIONS:
            self._hold_slots(guard)
        elif self._installed == 1 and self._kind is ResourceType.MEMORY:
            size = int(self._level * MEMORY_CAP_MB * 1024 * 1024)
            self._memory = []
            self._memory_stop = threading.Event()
            self._memory_thread = threading.Thread(
                target=hold_memory,
                args=(size, self._memory, self._memory_stop),
                name=f"chaos-memory-{self.spec.experiment_id}",
                daemon=True,
            )
            self._memory_thread.start()
        elif self._installed == 1 and self._kind is ResourceType.CPU:
            self._cpu_stop = threading.Event()
            self._cpu_thread = threading.Thread(
                target=burn_cpu,
                args=(self._level, self._cpu_stop),
                name=f"chaos-cpu-{self.spec.experiment_id}",
                daemon=True,
            )
            self._cpu_thread.start()

    def _uninstall(self, guard: Guard) -> None:
        self._installed -= 1
        release = self._slot_releases.pop(guard.name, None)
        if release is not None:
            release()
        if self._installed <= 0:
            self._installed = 0
            if self._memory_stop is not None:
                self._memory_stop.set()
            if self._memory_thread is not None:
                self._memory_thread.join(timeout=1.0)
            self._memory.clear()
            self._memory_stop = None
            self._memory_thread = None
            if self._cpu_stop is not None:
                self._cpu_stop.set()
            if self._cpu_thread is not None:
                self._cpu_thread.join(timeout=1.0)
            self._cpu_stop = None
            self._cpu_thread = None

    def _hold_slots(self, guard: Guard) -> None:
        limit = guard.max_concurrency
        if not limit:
            log.warning(
                "chaos %s: guard %s has no concurrency limit; CONNECTIONS holds nothing",
                self.spec.experiment_id,
                guard.name,
            )
            return
        count = max(1, round(limit * self._level)) if self._level > 0 else 0
        self._slot_releases[guard.name] = guard.hold_slots(count)

    async def _affect(self, guard: Guard) -> None:
        # The call competes for what is held; it counts as affected.
        self.stats.affected += 1

    def _refusal_is_ours(self, guard: Guard, exc: BaseException) -> bool:
        if isinstance(exc, ConcurrencyLimitError):
            # Refused for want of a slot: the slots this fault holds are why.
            return guard.name in self._slot_releases
        return super()._refusal_is_ours(guard, exc)


def hold_memory(
    size: int, chunks: list[bytearray], stop: threading.Event, chunk: int = MEMORY_CHUNK_BYTES
) -> None:
    """Fill ``size`` bytes into ``chunks``, a chunk at a time, unless ``stop`` is set first.

    Filled, not just allocated, so the pages really are resident. In a thread and in
    chunks because filling ~100 MiB in one go on the service's event loop blocks it long
    enough on a busy machine to time out calls of guards outside the blast radius.
    """
    left = size
    while left > 0 and not stop.is_set():
        n = min(chunk, left)
        chunks.append(bytearray(b"\xa5") * n)
        left -= n


def burn_cpu(level: float, stop: threading.Event, slice_s: float = CPU_SLICE_S) -> None:
    """Keep one CPU ``level`` busy until ``stop`` is set (busy, then asleep, per slice)."""
    busy = slice_s * level
    idle = slice_s - busy
    while not stop.is_set():
        end = time.perf_counter() + busy
        while time.perf_counter() < end:
            pass
        if idle > 0:
            stop.wait(idle)


FAULT_CLASSES: dict[ChaosType, type[ChaosFault]] = {
    ChaosType.LATENCY: LatencyFault,
    ChaosType.ERROR: ErrorFault,
    ChaosType.TIMEOUT: TimeoutFault,
    ChaosType.NETWORK_PARTITION: PartitionFault,
    ChaosType.CIRCUIT_BREAKER: BreakerFault,
    ChaosType.RESOURCE_EXHAUSTION: ResourceFault,
}
"""The fault class enforcing each chaos type."""


def build_fault(spec: FaultSpec, **kw: Any) -> ChaosFault:
    """The fault object enforcing ``spec`` (keyword arguments as for :class:`ChaosFault`)."""
    return FAULT_CLASSES[spec.chaos_type](spec, **kw)
