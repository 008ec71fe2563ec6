"""Service side of config versions: applies each dependency's current version live.

Follows :mod:`antifragile.learning.config_versions` as the fault subscriber follows the
fault plane: loads the current versions on start, follows ``af:config:changes``, re-reads
every ``resync_interval_s`` (a missed message, Redis back after an outage), and never
runs on the call path. Applying a version to a guard calls
:meth:`CircuitBreaker.reconfigure` and sets ``Guard.timeout_s``: both take effect for
the next call.

**Unset settings.** A version's None fields mean "as the service configured it": the
guard's breaker config and timeout are remembered before the first version is applied
(``baseline``) and every version is applied over that baseline, so a revert to a version
that left a field unset restores the service's own value exactly.

**Bounds: clamp, not refuse.** The publisher already refused values outside the policy
(the policy file lives with the worker, not here). The runtime clamps each value into
the bounds the version carries and into :data:`HARD_LIMITS` (a version written by hand
into Redis cannot disable a breaker) and logs one line per clamped version. Clamping
keeps the rest of the version in force, where refusing would leave a half-known state.

A chaos TIMEOUT fault does not touch ``Guard.timeout_s``: it hangs inside the guard's
timeout in force (a version's, if one applies), so a version and a fault never overwrite
each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from antifragile.errors import AntifragileError
from antifragile.inprocess._aio import cancel_and_wait
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.channel_follower import follow_channel, resync_every
from antifragile.inprocess.guard import Guard
from antifragile.learning.config_versions import CONFIG_CHANNEL, current
from antifragile.models.learning import ConfigVersion, DependencySettings

log = logging.getLogger(__name__)

HARD_LIMITS: dict[str, tuple[float, float]] = {
    "open_duration_s": (0.1, 3600.0),
    "failure_rate_threshold": (0.01, 1.0),
    "failure_threshold": (1, 10_000),
    "timeout_s": (0.001, 600.0),
}
"""Setting -> (min, max) the runtime never leaves, whatever a version says."""

_BREAKER_FIELDS = ("open_duration_s", "failure_rate_threshold", "failure_threshold")


def clamp(version: ConfigVersion) -> tuple[DependencySettings, list[str]]:
    """The version's settings clamped to its bounds, then to :data:`HARD_LIMITS`.

    The hard limits are applied last: bounds written by hand (``min = max = 1e-9``) can
    narrow a value but never take it out of them.

    Returns:
        The settings to apply and one ``name: value -> clamped`` line per change.
    """
    values = version.settings.model_dump()
    notes = []
    for name, value in values.items():
        if value is None:
            continue
        clamped = value
        bounds = version.bounds.get(name)
        if bounds is not None:  # the version's own bounds first (NaN bounds: ignored)
            clamped = min(max(clamped, bounds.min), bounds.max)
        low, high = HARD_LIMITS[name]  # then the hard limits, which always win
        if clamped != clamped:  # NaN (only a bound can bring one): the nearest safe end
            clamped = high
        clamped = min(max(clamped, low), high)
        if name == "failure_threshold":
            clamped = max(int(low), min(int(high), round(clamped)))
        if clamped != value:
            notes.append(f"{name}: {value} -> {clamped}")
            values[name] = clamped
    return DependencySettings.model_validate(values), notes


def _identity(version: ConfigVersion) -> tuple[int, str]:
    return version.version, version.at.isoformat()


class ConfigSubscriber:
    """Keeps every guard's settings at its dependency's current version.

    Args:
        guards: Returns the guards by dependency name.
        redis_url: The Redis of config versions.
        resync_interval_s: How often current versions are re-read. Default 2.
        clock: Monotonic clock of :attr:`applied_at` (tests measure apply latency).
    """

    def __init__(
        self,
        guards: Callable[[], Mapping[str, Guard]],
        redis_url: str,
        *,
        resync_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._guards = guards
        self._url = redis_url
        self.resync_interval_s = resync_interval_s
        self._clock = clock
        self.applied: dict[str, int] = {}
        """Dependency -> the version in force here."""
        self._applied_ids: dict[str, tuple[int, str]] = {}
        # (version, at): a Redis that lost its data numbers from 1 again.
        self.applied_at: dict[str, float] = {}
        """Dependency -> when (``clock``) that version was applied."""
        self.baseline: dict[str, tuple[CircuitBreakerConfig, float | None]] = {}
        self.connected = False
        self._redis: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self._warned: dict[str, object] = {}

    async def start(self) -> None:
        """Apply the current versions (if Redis answers) and follow changes."""
        self._redis = aioredis.from_url(self._url, socket_connect_timeout=1.0, socket_timeout=2.0)
        with contextlib.suppress(RedisError, OSError):
            await self.resync()
        self._tasks = [
            asyncio.create_task(self._listen(), name="af-config-listen"),
            asyncio.create_task(self._resync_loop(), name="af-config-resync"),
        ]

    async def stop(self) -> None:
        """Stop following (settings in force stay)."""
        await cancel_and_wait(self._tasks)
        self._tasks = []
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.aclose()
            self._redis = None

    async def resync(self) -> None:
        """Read every guarded dependency's current version and apply what changed.

        Raises:
            redis.RedisError / OSError: Redis failed (what was applied stays).
        """
        for name in list(self._guards()):
            await self.refresh(name)
        self.connected = True

    async def refresh(self, dependency: str) -> None:
        """Read ``dependency``'s current version and apply it if new here."""
        assert self._redis is not None
        async with self._lock:  # one reader at a time: never an older version last
            try:
                version = await current(self._redis, dependency)
            except (ValueError, AntifragileError, ResponseError) as exc:
                # A malformed or missing entry, a key of the wrong type: this dependency
                # keeps its settings; the others are still read (never a stopped loop).
                self._warn_once(dependency, ("unreadable", str(exc)), "unreadable: %s", exc)
                return
            if version is None or self._applied_ids.get(dependency) == _identity(version):
                return
            if version.dependency != dependency:
                self._warn_once(
                    dependency,
                    _identity(version),
                    "current version is one of %r; skipped",
                    version.dependency,
                )
                return
            try:
                self.apply(version)
            except Exception as exc:  # a version the guard refuses: keep what is in force
                self._warn_once(dependency, _identity(version), "not applied: %r", exc)

    def _warn_once(self, dependency: str, key: object, message: str, *args: object) -> None:
        """Log ``message`` once per ``(dependency, key)`` (a resync runs every 2 s)."""
        if self._warned.get(dependency) != key:
            self._warned[dependency] = key
            log.warning("config %s: " + message, dependency, *args)

    def apply(self, version: ConfigVersion) -> None:
        """Apply ``version`` to its dependency's guard and breaker (no-op: no guard)."""
        guard = self._guards().get(version.dependency)
        if guard is None:
            return
        settings, notes = clamp(version)
        if notes:
            log.warning(
                "config %s v%d: clamped to bounds (%s)",
                version.dependency,
                version.version,
                "; ".join(notes),
            )
        base_config, base_timeout = self.baseline.setdefault(
            version.dependency, (guard.breaker.config, guard.timeout_s)
        )
        changes = {
            name: getattr(settings, name)
            for name in _BREAKER_FIELDS
            if getattr(settings, name) is not None
        }
        guard.breaker.reconfigure(dataclasses.replace(base_config, **changes))
        guard.timeout_s = settings.timeout_s if settings.timeout_s is not None else base_timeout
        self.applied[version.dependency] = version.version
        self._applied_ids[version.dependency] = _identity(version)
        self.applied_at[version.dependency] = self._clock()
        log.info(
            "config %s: version %d applied (by %s)", version.dependency, version.version, version.by
        )

    async def _listen(self) -> None:
        await follow_channel(
            self._url,
            CONFIG_CHANNEL,
            on_subscribed=self.resync,  # subscribed: repair whatever was missed
            on_message=self._on_message,
            on_down=self._down,
        )

    async def _on_message(self, data: bytes) -> None:
        try:
            dependency = str(json.loads(data)["dependency"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed config message %r", data)
            return
        if dependency in self._guards():
            await self.refresh(dependency)

    def _down(self, exc: BaseException) -> None:
        self.connected = False
        log.debug("config versions unreachable (%s); settings in force stay", exc)

    async def _resync_loop(self) -> None:
        await resync_every(self.resync_interval_s, self.resync, self._down)
