"""Runtime: guards are registered everywhere they must be, and recovery requests validated."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from antifragile.errors import ConfigError
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.breaker_state import CircuitState
from antifragile.inprocess.metering import MeteringIntegration
from antifragile.inprocess.runtime import Runtime
from antifragile.models.recovery import RecoveryRequest, RecoveryStrategy
from antifragile.settings import Settings
from antifragile.testing import eventually
from tests.unit.conftest import RestartableRedis


def rt(redis_url: str = "redis://127.0.0.1:1/0", **kw: object) -> Runtime:
    return Runtime(Settings(redis_url=redis_url), instance_id="inst-1", **kw)  # type: ignore[arg-type]


async def ok() -> int:
    return 1


def test_guard_registers_breaker_health_faults_and_metering() -> None:
    runtime = rt()
    g = runtime.guard("redis", probe="redis://127.0.0.1:6379/0")
    assert runtime.guard("redis") is g
    assert runtime.breakers["redis"] is g.breaker
    assert "redis" in runtime.health.breakers
    assert runtime.metering is not None and g in runtime.metering._sources
    g.breaker.force_open()
    assert runtime.health.health_score == 0.0


def test_default_recovery_request_comes_from_probe_and_instance() -> None:
    g = rt().guard("api", probe="http://127.0.0.1:8080/health")
    assert g.recovery is not None
    assert g.recovery.service == "api"
    assert g.recovery.probe == "http://127.0.0.1:8080/health"
    assert g.recovery.requested_by == "inst-1"
    assert g.recovery.reason == "circuit breaker opened"


def test_recovery_overrides_and_opt_out() -> None:
    runtime = rt()
    g = runtime.guard("db", probe="tcp://127.0.0.1:5432", recovery={"strategy": "manual"})
    assert g.recovery is not None and g.recovery.strategy is RecoveryStrategy.MANUAL
    assert runtime.guard("nop", probe="tcp://127.0.0.1:1", recovery=False).recovery is None
    assert runtime.guard("noprobe").recovery is None
    full = RecoveryRequest(service="x", probe="tcp://127.0.0.1:9")
    assert runtime.guard("x", recovery=full).recovery is full


def test_bad_recovery_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="probe"):
        rt().guard("db", probe="ftp://nowhere")
    with pytest.raises(ConfigError, match="service"):
        rt().guard("bad name!", probe="tcp://127.0.0.1:1")


async def test_calls_keep_working_while_redis_and_temporal_are_down() -> None:
    async def never_connects() -> object:
        raise RuntimeError("temporal down")

    runtime = rt(
        metering=MeteringIntegration("redis://127.0.0.1:1/0", stop_timeout_s=0.2),
        temporal_client_factory=never_connects,
        bridge_options={"initial_backoff_s": 0.01, "max_backoff_s": 0.02},
    )
    g = runtime.guard(
        "svc", probe="tcp://127.0.0.1:1", breaker_config=CircuitBreakerConfig(failure_threshold=1)
    )
    await runtime.start()
    try:
        g.breaker.force_open()
        g.breaker.reset()
        g.breaker._transition(CircuitState.OPEN, "test")
        assert runtime.bridge is not None
        bridge = runtime.bridge
        await eventually(lambda: bridge.failures >= 1, timeout=5)
        assert runtime.bridge.failures >= 1
        assert runtime.bridge.pending == {"svc": CircuitState.OPEN}  # latest state only
        g.breaker.reset()
        assert await g.call(ok) == 1
    finally:
        await asyncio.wait_for(runtime.stop(), 10)
    assert runtime.metering is not None
    assert runtime.metering.stats().buffered == 1  # kept, not lost, while Redis is down


async def test_runtime_publishes_snapshot_and_meters_guard_calls(
    own_redis: RestartableRedis,
) -> None:
    runtime = rt(own_redis.url, bridge_options={"initial_backoff_s": 0.01})
    g = runtime.guard("svc")
    await runtime.start()
    try:
        for _ in range(25):
            await g.call(ok)
        client = aioredis.Redis.from_url(own_redis.url)
        try:
            for _ in range(100):
                raw = await client.get("af:health:inst-1")
                if raw:
                    break
                await asyncio.sleep(0.02)
            doc = json.loads(raw)
            assert doc["instance"] == "inst-1"
            assert doc["circuit_details"]["svc"]["state"] == "CLOSED"
        finally:
            await client.aclose()
    finally:
        await runtime.stop()
    assert runtime.metering is not None
    s = runtime.metering.stats()
    assert (s.recorded, s.written, s.buffered) == (25, 25, 0)
