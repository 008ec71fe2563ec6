"""Runtime: what a service embeds - guards, health, metering, faults and the bridge.

Example:
    >>> runtime = Runtime()  # settings from ANTIFRAGILE_* variables
    >>> redis_guard = runtime.guard("redis", probe="redis://127.0.0.1:6379/0")
    >>> await runtime.start()
    >>> async with redis_guard:
    ...     await client.get("k")
    >>> await runtime.stop()

Nothing on the call path talks to the network: guards touch local memory only; the
metering flusher, the bridge to Temporal and the Redis health publisher are background
tasks started by :meth:`Runtime.start`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from types import TracebackType
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from temporalio.client import Client

if TYPE_CHECKING:
    from antifragile.inprocess.metrics import MetricsServer

from antifragile.errors import ConfigError, describe_validation_error
from antifragile.inprocess.breaker import CircuitBreaker
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.breaker_state import Clock
from antifragile.inprocess.bridge import Bridge, ClientFactory
from antifragile.inprocess.config_subscriber import ConfigSubscriber
from antifragile.inprocess.fault_subscriber import FaultSubscriber
from antifragile.inprocess.fault_table import FaultTable
from antifragile.inprocess.guard import Guard
from antifragile.inprocess.health import HealthAggregator, HealthAggregatorConfig
from antifragile.inprocess.metering import MeteringIntegration
from antifragile.inprocess.traffic import TrafficWindows
from antifragile.models.recovery import RecoveryRequest
from antifragile.settings import Settings

log = logging.getLogger(__name__)


def default_instance_id() -> str:
    """``{hostname}-{pid}``: unique per process on a fleet."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Runtime:
    """Owns this process's breakers, guards, health aggregator, metering and bridge.

    Args:
        settings: Connection settings; default read from ``ANTIFRAGILE_*``.
        instance_id: This process's name in health snapshots and signals. Default
            ``settings.instance_id`` or ``{hostname}-{pid}``.
        temporal_client: A connected client for the bridge; default: connect lazily
            (in the background, with backoff) using ``settings``.
        temporal_client_factory: Alternative to ``temporal_client``.
        redis_client: Client for health snapshots and metering; default one built
            from ``settings.redis_url`` (connections are made lazily).
        health_config: Aggregator thresholds/anti-flapping. Default
            :class:`HealthAggregatorConfig`.
        metering: A :class:`MeteringIntegration`, or True (default: one writing to
            ``af:metering`` on ``settings.redis_url``), or False (no metering).
        tenant_id: Tenant that guard calls are metered to. Default ``"default"``.
        bridge: Run the bridge to Temporal and the health publisher. Default True.
        publish_interval_s: Seconds between health snapshots. Default 3.
        health_ttl_s: TTL of health snapshots. Default 15.
        clock: Monotonic clock for breakers and the aggregator (tests).
        bridge_options: Extra keyword arguments for :class:`Bridge` (e.g. backoff).
        fault_plane: Follow the chaos fault plane (Redis leases on ``af:faults``) so
            chaos experiments reach this process's guards. Default True.
        config_plane: Follow config versions (``af:config:*``, see
            :mod:`antifragile.inprocess.config_subscriber`) and apply them live to the
            guards. Default True.
        traffic_window_s: Length of the traffic windows published with the health
            snapshot (:mod:`antifragile.inprocess.traffic`), seconds. Default
            ``settings.traffic_window_s`` (60 unless ``ANTIFRAGILE_TRAFFIC_WINDOW_S``
            says otherwise: the fleet's harvesters must use the same length).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        instance_id: str | None = None,
        temporal_client: Client | None = None,
        temporal_client_factory: ClientFactory | None = None,
        redis_client: aioredis.Redis | None = None,
        health_config: HealthAggregatorConfig | None = None,
        metering: MeteringIntegration | bool = True,
        tenant_id: str = "default",
        bridge: bool = True,
        publish_interval_s: float = 3.0,
        health_ttl_s: float = 15.0,
        clock: Clock | None = None,
        bridge_options: dict[str, Any] | None = None,
        fault_plane: bool = True,
        config_plane: bool = True,
        traffic_window_s: float | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.instance_id = instance_id or self.settings.instance_id or default_instance_id()
        self.tenant_id = tenant_id
        self._clock = clock
        self._owns_redis = redis_client is None
        self._redis = redis_client or aioredis.Redis.from_url(
            self.settings.redis_url, socket_timeout=2.0, socket_connect_timeout=1.0
        )
        self.health = HealthAggregator(health_config, clock=clock)
        self.faults = FaultTable()
        self.breakers: dict[str, CircuitBreaker] = {}
        self.guards: dict[str, Guard] = {}
        if metering is True:
            self.metering: MeteringIntegration | None = MeteringIntegration(
                redis_client=self._redis, instance_id=self.instance_id
            )
        elif metering is False:
            self.metering = None
        else:
            self.metering = metering
        self.traffic = TrafficWindows(
            lambda: self.guards,
            self.instance_id,
            window_s=self.settings.traffic_window_s
            if traffic_window_s is None
            else traffic_window_s,
        )
        self.bridge: Bridge | None = None
        if bridge:
            self.bridge = Bridge(
                self.settings,
                self.instance_id,
                self.health,
                self._recovery_for,
                client=temporal_client,
                client_factory=temporal_client_factory,
                redis_client=self._redis,
                publish_interval_s=publish_interval_s,
                health_ttl_s=health_ttl_s,
                snapshot_extras=lambda: {"traffic": self.traffic.document()},
                **(bridge_options or {}),
            )
            self.health.on_health_change(self.bridge.health_changed)
        # Hook of the chaos engine: follows the Redis fault plane into self.faults.
        self.fault_subscriber: FaultSubscriber | None = None
        if fault_plane:
            self.fault_subscriber = FaultSubscriber(
                self.faults, self.settings.redis_url, instance_id=self.instance_id
            )
        self.config_subscriber: ConfigSubscriber | None = None
        if config_plane:
            self.config_subscriber = ConfigSubscriber(lambda: self.guards, self.settings.redis_url)
        self._started = False
        self._metrics_server: MetricsServer | None = None

    # ------------------------------------------------------------------ guards

    def guard(
        self,
        name: str,
        *,
        probe: str | None = None,
        breaker_config: CircuitBreakerConfig | None = None,
        recovery: RecoveryRequest | dict[str, Any] | bool | None = None,
        weight: float = 1.0,
        timeout_s: float | None = None,
        max_concurrency: int | None = None,
        metered: bool = True,
        tenant_id: str | None = None,
    ) -> Guard:
        """The guard of dependency ``name``, created on first use (later calls return it).

        Args:
            name: Dependency name: breaker name, fault target, ``recovery-{name}``.
            probe: URL proving the dependency is healthy (tcp://, http(s)://, redis://).
                Needed for automatic recovery.
            breaker_config: Breaker thresholds. Default :class:`CircuitBreakerConfig`.
            recovery: The request started when the breaker opens: a full
                :class:`RecoveryRequest`, a dict of its fields (``service`` and ``probe``
                filled in), None (default request when ``probe`` is given) or False
                (never start a recovery).
            weight: Weight of the breaker in the health score. Default 1.0.
            timeout_s: Per-call timeout. Default none.
            max_concurrency: Calls in flight at once. Default unlimited.
            metered: Count calls as usage (``guarded_call:{name}``). Default True.
            tenant_id: Tenant of metered calls. Default the runtime's.

        Raises:
            ConfigError: a bad recovery request or setting (names the field).
        """
        existing = self.guards.get(name)
        if existing is not None:
            return existing
        request = self._build_recovery(name, probe, recovery)
        breaker = CircuitBreaker(name, breaker_config, clock=self._clock)
        guard = Guard(
            name,
            breaker,
            probe=probe,
            recovery=request,
            timeout_s=timeout_s,
            max_concurrency=max_concurrency,
            tenant_id=tenant_id or self.tenant_id,
        )
        self.breakers[name] = breaker
        self.guards[name] = guard
        self.health.register_circuit_breaker(name, breaker, weight=weight)
        self.faults.attach(guard)
        if metered and self.metering is not None:
            self.metering.add_source(guard)
        if self.bridge is not None:
            breaker.on_state_change(self.bridge.notify)
        return guard

    def _build_recovery(
        self, name: str, probe: str | None, recovery: RecoveryRequest | dict[str, Any] | bool | None
    ) -> RecoveryRequest | None:
        if recovery is False or (probe is None and not isinstance(recovery, RecoveryRequest)):
            return None
        if isinstance(recovery, RecoveryRequest):
            return recovery
        fields: dict[str, Any] = {
            "reason": "circuit breaker opened",
            "requested_by": self.instance_id,
            "constitutional_hash": self.settings.constitutional_hash,
        }
        if isinstance(recovery, dict):
            fields.update(recovery)
        fields.update(service=name, probe=probe)
        try:
            return RecoveryRequest.model_validate(fields)
        except ValidationError as exc:
            raise ConfigError(
                f"guard {name!r} recovery: {describe_validation_error(exc)}"
            ) from None

    def _recovery_for(self, name: str) -> RecoveryRequest | None:
        guard = self.guards.get(name)
        return guard.recovery if guard is not None else None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start metering, health history and the bridge; idempotent."""
        if self._started:
            return
        self._started = True
        if self.metering is not None:
            await self.metering.start()
        await self.health.start()
        if self.bridge is not None:
            await self.bridge.start()
        if self.settings.metrics_port and self._metrics_server is None:
            from antifragile.inprocess.metrics import RuntimeCollector, serve

            registry = CollectorRegistry()
            registry.register(
                RuntimeCollector(self.instance_id, self.health, self.faults, self.metering)
            )
            self._metrics_server = serve(registry, self.settings.metrics_port)
        if self.fault_subscriber is not None:
            await self.fault_subscriber.start()
        await self.traffic.start()
        if self.config_subscriber is not None:
            await self.config_subscriber.start()

    async def stop(self) -> None:
        """Flush metering, stop the bridge (removing this instance's snapshot), close."""
        if not self._started:
            return
        self._started = False
        if self.config_subscriber is not None:
            await self.config_subscriber.stop()
        await self.traffic.stop()
        if self.fault_subscriber is not None:
            await self.fault_subscriber.stop()  # drops every fault this process enforces
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None
        if self.bridge is not None:
            await self.bridge.stop()
        if self.metering is not None:
            await self.metering.stop()
        await self.health.stop()
        if self._owns_redis:
            with contextlib.suppress(Exception):
                await self._redis.aclose()

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
