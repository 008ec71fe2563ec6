"""Prometheus metrics of the in-process runtime and of the worker.

Everything is computed at scrape time by collectors that read the live objects, so the
hot path pays nothing for metrics. Temporal SDK metrics come from the SDK's own
Prometheus exporter (see :func:`temporal_runtime_with_metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping, Sized
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from antifragile.inprocess.breaker_state import CircuitState

if TYPE_CHECKING:
    from temporalio.client import Client

    from antifragile.inprocess.health import HealthAggregator
    from antifragile.inprocess.metering import MeteringIntegration

log = logging.getLogger(__name__)

_STATE_VALUE = {
    CircuitState.CLOSED: 0.0,
    CircuitState.HALF_OPEN: 1.0,
    CircuitState.OPEN: 2.0,
    CircuitState.FORCED_OPEN: 3.0,
}


class RuntimeCollector(Collector):
    """Breakers, health, metering and faults of one in-process runtime.

    Given the parts it reads, never the runtime that owns them (the runtime builds it
    from its parts when ``metrics_port`` is set). A scrape runs on the Prometheus server's
    thread, so it only reads snapshots: the aggregator's record of breaker states and its
    immutable status (it touches no breaker: no transition, no listener, no callback, no
    asyncio object), the fault table's size and the metering counters.

    Args:
        instance_id: The ``instance`` label.
        health: The process's aggregator (every guarded breaker is registered in it).
        faults: The fault table (only its ``len`` is read).
        metering: The metering integration, or None (no metering series).
    """

    def __init__(
        self,
        instance_id: str,
        health: HealthAggregator,
        faults: Sized,
        metering: MeteringIntegration | None = None,
    ) -> None:
        self._instance = instance_id
        self._health = health
        self._faults = faults
        self._metering = metering

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Read the parts' snapshots (called by the Prometheus client on scrape)."""
        instance = self._instance
        health = self._health
        state = GaugeMetricFamily(
            "antifragile_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open, 3 forced open.",
            labels=["instance", "dependency"],
        )
        for name, breaker_state in sorted(health.breaker_states().items()):
            state.add_metric([instance, name], _STATE_VALUE[breaker_state])
        yield state
        score = GaugeMetricFamily(
            "antifragile_health_score", "Health score 0.0-1.0.", labels=["instance"]
        )
        score.add_metric([instance], health.health_score)
        yield score
        reported = health.status
        status = GaugeMetricFamily(
            "antifragile_health_status",
            "1 for the reported status, 0 for the others.",
            labels=["instance", "status"],
        )
        for value in ("HEALTHY", "DEGRADED", "CRITICAL", "UNKNOWN"):
            status.add_metric([instance, value], 1.0 if reported.value == value else 0.0)
        yield status
        faults = GaugeMetricFamily(
            "antifragile_faults_active",
            "Chaos faults applied in this process.",
            labels=["instance"],
        )
        faults.add_metric([instance], float(len(self._faults)))
        yield faults
        if self._metering is not None:
            stats = self._metering.stats()
            for field, help_text in (
                ("recorded", "Usage events recorded."),
                ("written", "Usage events confirmed written to the Redis stream."),
                ("dropped", "Usage events dropped because the buffer was full."),
                ("write_errors", "Failed writes to the Redis stream (events are retried)."),
            ):
                counter = CounterMetricFamily(
                    f"antifragile_metering_{field}", help_text, labels=["instance"]
                )
                counter.add_metric([instance], float(getattr(stats, field)))
                yield counter
            buffered = GaugeMetricFamily(
                "antifragile_metering_buffered",
                "Usage events waiting to be written.",
                labels=["instance"],
            )
            buffered.add_metric([instance], float(stats.buffered))
            yield buffered


class WorkflowCountCollector(Collector):
    """Recoveries and experiments by state, from Temporal visibility (refreshed in background).

    Counting is a network call, so it never happens during a scrape: :meth:`refresh`
    runs every ``interval_s`` in the worker's loop and the collector serves the last
    counts.
    """

    def __init__(
        self, client: Client, states: Mapping[str, Iterable[str]], interval_s: float = 10.0
    ) -> None:
        self._client = client
        self._states = {kind: list(values) for kind, values in states.items()}
        self._interval_s = interval_s
        self._counts: dict[tuple[str, str], int] = {}

    async def refresh(self) -> None:
        """Count running-or-recent workflows per (kind, AfState)."""
        counts = {}
        for kind, states in self._states.items():
            for state in states:
                query = f'AfKind="{kind}" AND AfState="{state}"'
                counts[(kind, state)] = (await self._client.count_workflows(query)).count
        self._counts = counts

    async def run(self) -> None:
        """Refresh forever; failures are logged and retried at the next interval."""
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("workflow count refresh failed: %s", exc)
            await asyncio.sleep(self._interval_s)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Serve the last counts."""
        gauge = GaugeMetricFamily(
            "antifragile_workflows",
            "Recoveries and chaos experiments by state.",
            labels=["kind", "state"],
        )
        for (kind, state), count in sorted(self._counts.items()):
            gauge.add_metric([kind, state], float(count))
        yield gauge


class MetricsServer:
    """``/metrics`` for one registry, served from a daemon thread until :meth:`close`."""

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> None:
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port = int(self._httpd.server_port)
        # Where close() knocks to wake the server's select(): any-address binds are
        # reachable on loopback.
        self._knock_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        self._closed = False
        log.info("prometheus metrics on %s:%d/metrics", host, self.port)

    def close(self) -> None:
        """Stop serving and free the port; idempotent.

        Called on the event loop's thread (``Runtime.stop``), so it must not wait out the
        server thread's select() poll (0.5 s, during which the loop was blocked): the
        shutdown runs on a helper thread while ``close`` knocks on the port, which wakes
        the select() at once.
        """
        if self._closed:
            return
        self._closed = True
        stopper = threading.Thread(target=self._httpd.shutdown, name="metrics-shutdown")
        stopper.start()
        while stopper.is_alive():
            with contextlib.suppress(OSError):
                socket.create_connection((self._knock_host, self.port), timeout=0.1).close()
            stopper.join(0.01)
        self._httpd.server_close()


def serve(registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> MetricsServer:
    """Serve ``registry`` at ``http://host:port/metrics`` (port 0: any free port)."""
    return MetricsServer(registry, port, host)


def temporal_runtime_with_metrics(port: int, host: str = "0.0.0.0") -> Runtime:
    """A Temporal core runtime exporting the SDK's own metrics in Prometheus format."""
    return Runtime(
        telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"{host}:{port}"))
    )
