"""Config versions in a real Redis, and a running Runtime applying them live."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.config_subscriber import HARD_LIMITS, clamp
from antifragile.inprocess.runtime import Runtime
from antifragile.learning import config_versions as cv
from antifragile.models.learning import ConfigVersion, DependencySettings, SettingBounds
from antifragile.policy import AdaptationPolicyConfig
from antifragile.settings import Settings
from tests.unit.conftest import RestartableRedis


@pytest.fixture
async def client(own_redis: RestartableRedis) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(own_redis.url)
    yield c
    await c.aclose()


def _s(**kw: float) -> DependencySettings:
    return DependencySettings.model_validate(kw)


# ------------------------------------------------------------------ the client


async def test_publish_history_current_and_previous(client: aioredis.Redis) -> None:
    assert await cv.current(client, "db") is None
    assert await cv.history(client, "db") == []
    v1 = await cv.publish(client, "db", _s(open_duration_s=10), "alice", "first")
    v2 = await cv.publish(client, "db", _s(open_duration_s=20, timeout_s=0.5), "bob", "second")
    assert (v1.version, v1.previous, v2.version, v2.previous) == (1, None, 2, 1)
    assert await cv.current(client, "db") == v2
    assert [v.version for v in await cv.history(client, "db")] == [1, 2]
    assert [v.by for v in await cv.history(client, "db")] == ["alice", "bob"]
    assert v2.bounds == AdaptationPolicyConfig().bounds()
    assert await client.sismember(cv.DEPENDENCIES_KEY, "db")


async def test_publish_outside_the_policy_is_refused(client: aioredis.Redis) -> None:
    policy = AdaptationPolicyConfig(open_duration_s=SettingBounds(min=1, max=60))
    with pytest.raises(cv.ConfigVersionError, match=r"open_duration_s=61\.0 outside"):
        await cv.publish(client, "db", _s(open_duration_s=61), "x", "y", policy=policy)
    assert await cv.history(client, "db") == []


async def test_revert_restores_exactly_the_previous_settings(client: aioredis.Redis) -> None:
    with pytest.raises(cv.ConfigVersionError, match="no version"):
        await cv.revert(client, "db", "x", "nothing yet")
    first = _s(failure_rate_threshold=0.1 + 0.2, open_duration_s=12.345678901234567)
    await cv.publish(client, "db", first, "a", "1")
    baseline = await cv.revert(client, "db", "x", "back to the service's own")
    assert baseline.settings == _s() and baseline.revert_of == 1
    await cv.revert(client, "db", "x", "redo")  # a revert of a revert redoes it
    await cv.publish(client, "db", _s(open_duration_s=99, timeout_s=2), "a", "2")
    back = await cv.revert(client, "db", "ops", "too slow")
    assert back.settings == first  # float-exact (0.30000000000000004 survives)
    assert back.settings.failure_rate_threshold == 0.1 + 0.2
    assert (back.version, back.previous, back.revert_of) == (5, 4, 4)
    redo = await cv.revert(client, "db", "ops", "undo the revert")
    assert redo.settings == _s(open_duration_s=99, timeout_s=2)
    assert (redo.version, redo.previous, redo.revert_of) == (6, 5, 5)
    assert [v.version for v in await cv.history(client, "db")] == [1, 2, 3, 4, 5, 6]


async def test_concurrent_publishes_never_share_a_version(own_redis: RestartableRedis) -> None:
    clients = [aioredis.Redis.from_url(own_redis.url) for _ in range(20)]
    try:
        results = await asyncio.gather(
            *(
                cv.publish(c, "db", _s(open_duration_s=i + 1), f"p{i}", "race")
                for i, c in enumerate(clients)
            )
        )
        assert sorted(v.version for v in results) == list(range(1, 21))
        history = await cv.history(clients[0], "db")
        assert [v.version for v in history] == list(range(1, 21))
        assert [v.previous for v in history] == [None, *range(1, 20)]  # a chain
        assert (await cv.current(clients[0], "db")) == history[-1]
    finally:
        for c in clients:
            await c.aclose()


def _version(settings: DependencySettings, **bounds: SettingBounds) -> ConfigVersion:
    return ConfigVersion(
        dependency="db", version=1, settings=settings, by="x", at=datetime.now(UTC), bounds=bounds
    )


@pytest.mark.parametrize(
    ("settings", "bounds", "applied", "clamped"),
    [
        (_s(), {}, _s(), 0),
        (_s(open_duration_s=30), {}, _s(open_duration_s=30), 0),
        (_s(open_duration_s=1e6), {}, _s(open_duration_s=HARD_LIMITS["open_duration_s"][1]), 1),
        (
            _s(open_duration_s=400, timeout_s=0.0001),
            {"open_duration_s": SettingBounds(min=1, max=300)},
            _s(open_duration_s=300, timeout_s=0.001),
            2,
        ),
        (_s(failure_rate_threshold=0.5), {}, _s(failure_rate_threshold=0.5), 0),
        (_s(failure_threshold=10**6), {}, _s(failure_threshold=10_000), 1),
    ],
)
def test_clamp_table(
    settings: DependencySettings,
    bounds: dict[str, SettingBounds],
    applied: DependencySettings,
    clamped: int,
) -> None:
    result, notes = clamp(_version(settings, **bounds))
    assert result == applied
    assert len(notes) == clamped


# ------------------------------------------------------------------ a running runtime


def _runtime(url: str) -> Runtime:
    return Runtime(
        Settings(redis_url=url),
        instance_id="inst-1",
        bridge=False,
        metering=False,
        fault_plane=False,
    )


async def _until(predicate: object, timeout: float = 3.0) -> float:
    """Seconds until ``predicate()`` is true (polled every ms)."""
    started = time.perf_counter()
    while not predicate():  # type: ignore[operator]
        if time.perf_counter() - started > timeout:
            raise AssertionError("not applied in time")
        await asyncio.sleep(0.001)
    return time.perf_counter() - started


async def test_a_running_runtime_applies_versions_within_a_second(
    own_redis: RestartableRedis, client: aioredis.Redis
) -> None:
    own = CircuitBreakerConfig(open_duration_s=30.0, failure_threshold=7)
    runtime = _runtime(own_redis.url)
    guard = runtime.guard("db", breaker_config=own, timeout_s=1.5)
    await runtime.start()
    try:
        latencies = []
        for i in range(20):
            value = 10.0 + i
            await cv.publish(client, "db", _s(open_duration_s=value, timeout_s=0.25), "t", "x")
            latencies.append(
                await _until(lambda v=value: guard.breaker.config.open_duration_s == v)
            )
        assert guard.timeout_s == 0.25
        assert guard.breaker.config.failure_threshold == 7  # unset: the service's own
        p50, worst = statistics.median(latencies), max(latencies)
        print(
            f"\napply latency over 20 publishes: p50 {p50 * 1000:.1f} ms, max {worst * 1000:.1f} ms"
        )
        assert worst < 1.0
        # A revert restores the previous version exactly.
        before = guard.breaker.config
        await cv.publish(client, "db", _s(open_duration_s=200, failure_threshold=3), "t", "y")
        await _until(lambda: guard.breaker.config.open_duration_s == 200)
        assert guard.timeout_s == 1.5  # unset again: the service's own timeout
        await cv.revert(client, "db", "t", "back")
        await _until(lambda: guard.breaker.config.open_duration_s == 29.0)
        assert guard.breaker.config == before
        assert guard.timeout_s == 0.25
        # Back to a version with nothing set: the service's own configuration.
        await cv.publish(client, "db", _s(), "t", "reset")
        await _until(lambda: guard.breaker.config == own)
        assert guard.timeout_s == 1.5
    finally:
        await runtime.stop()


async def test_redis_down_then_back_resync_applies_the_latest(
    own_redis: RestartableRedis,
) -> None:
    runtime = _runtime(own_redis.url)
    guard = runtime.guard("db")
    assert runtime.config_subscriber is not None
    runtime.config_subscriber.resync_interval_s = 0.2
    await runtime.start()
    try:
        c = aioredis.Redis.from_url(own_redis.url)
        await cv.publish(c, "db", _s(open_duration_s=5), "t", "x")
        await c.aclose()
        await _until(lambda: guard.breaker.config.open_duration_s == 5)
        own_redis.stop()
        await asyncio.sleep(0.5)
        assert guard.breaker.config.open_duration_s == 5  # settings in force stay
        own_redis.start()  # an empty Redis: numbering starts again at 1
        c = aioredis.Redis.from_url(own_redis.url)
        # Written without the announcement (a missed message): only a resync finds it.
        version = ConfigVersion(
            dependency="db",
            version=1,
            settings=_s(open_duration_s=42),
            by="t",
            at=datetime.now(UTC),
            bounds=AdaptationPolicyConfig().bounds(),
        )
        await c.rpush(cv.versions_key("db"), version.model_dump_json())
        await c.set(cv.current_key("db"), 1)
        await c.aclose()
        await _until(lambda: guard.breaker.config.open_duration_s == 42, timeout=5.0)
        assert dataclasses.replace(guard.breaker.config, open_duration_s=30.0) == (
            CircuitBreakerConfig()
        )
    finally:
        await runtime.stop()
