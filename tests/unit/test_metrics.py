"""Prometheus endpoints: the runtime's live state at scrape time, and the worker's."""

from __future__ import annotations

import contextlib
import urllib.request

from prometheus_client import CollectorRegistry, generate_latest

from antifragile.breaker import CircuitBreakerConfig
from antifragile.metrics import RuntimeCollector
from antifragile.processes import free_port
from antifragile.runtime import Runtime
from antifragile.settings import Settings


class Boom(Exception):
    pass


async def fail() -> None:
    raise Boom


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


async def test_runtime_serves_breaker_state_health_and_faults_when_a_port_is_set() -> None:
    port = free_port()
    runtime = Runtime(
        Settings(metrics_port=port), instance_id="svc-1", bridge=False, metering=False
    )
    runtime.guard("redis", breaker_config=CircuitBreakerConfig(failure_threshold=1))
    runtime.guard("postgres")
    await runtime.start()
    try:
        with contextlib.suppress(Boom):
            await runtime.guards["redis"].call(fail)
        text = scrape(port)
    finally:
        await runtime.stop()
    assert 'antifragile_breaker_state{dependency="redis",instance="svc-1"} 2.0' in text
    assert 'antifragile_breaker_state{dependency="postgres",instance="svc-1"} 0.0' in text
    assert 'antifragile_health_score{instance="svc-1"} 0.5' in text
    assert 'antifragile_faults_active{instance="svc-1"} 0.0' in text


async def test_metering_counters_follow_the_accounting() -> None:
    runtime = Runtime(Settings(), instance_id="m", bridge=False)
    guard = runtime.guard("cache")

    async def ok() -> None:
        return None

    for _ in range(5):
        await guard.call(ok)
    registry = CollectorRegistry()
    registry.register(RuntimeCollector(runtime))
    text = generate_latest(registry).decode()
    assert 'antifragile_metering_recorded_total{instance="m"} 5.0' in text
    assert 'antifragile_metering_dropped_total{instance="m"} 0.0' in text
