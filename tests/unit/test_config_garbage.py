"""Config versions written by hand into Redis: the runtime skips or clamps, never stops.

Each test writes what a person (or a broken tool) could leave in Redis and checks that
the services' runtime keeps applying the other dependencies' versions and never leaves
the hard limits (a breaker cannot be disabled from Redis).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from antifragile.inprocess.config_subscriber import HARD_LIMITS, clamp
from antifragile.inprocess.runtime import Runtime
from antifragile.learning import config_versions as cv
from antifragile.models.learning import ConfigVersion, DependencySettings, SettingBounds
from antifragile.settings import Settings
from tests.unit.conftest import RestartableRedis


@pytest.fixture
async def client(own_redis: RestartableRedis) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(own_redis.url)
    yield c
    await c.aclose()


def _runtime(url: str) -> Runtime:
    return Runtime(
        Settings(redis_url=url),
        instance_id="inst-1",
        bridge=False,
        metering=False,
        fault_plane=False,
    )


async def _until(predicate: object, timeout: float = 5.0) -> None:
    started = time.perf_counter()
    while not predicate():  # type: ignore[operator]
        if time.perf_counter() - started > timeout:
            raise AssertionError("not applied in time")
        await asyncio.sleep(0.01)


def _version(dependency: str, number: int, **settings: float) -> ConfigVersion:
    return ConfigVersion(
        dependency=dependency,
        version=number,
        settings=DependencySettings.model_validate(settings),
        by="hand",
        at=datetime.now(UTC),
    )


@pytest.mark.parametrize(
    "garbage",
    ["wrongtype", "huge-number", "zero", "other-dependency"],
)
async def test_garbage_of_one_dependency_never_stops_the_others(
    own_redis: RestartableRedis, client: aioredis.Redis, garbage: str
) -> None:
    """A bad ``current`` (or entry) for ``aa`` leaves ``aa`` as it is; ``db`` still applies."""
    runtime = _runtime(own_redis.url)
    aa = runtime.guard("aa")  # first: read first by every resync
    db = runtime.guard("db")
    zz = runtime.guard("zz")
    aa_before, zz_before = aa.breaker.config, zz.breaker.config
    assert runtime.config_subscriber is not None
    runtime.config_subscriber.resync_interval_s = 0.2
    if garbage == "wrongtype":
        await client.hset(cv.current_key("aa"), "x", "1")
    elif garbage == "huge-number":
        await client.rpush(
            cv.versions_key("aa"), _version("aa", 1, open_duration_s=7).model_dump_json()
        )
        await client.set(cv.current_key("aa"), "99999999999999999999999")
    elif garbage == "zero":  # LINDEX -1 would read the newest entry
        await client.rpush(
            cv.versions_key("aa"), _version("aa", 1, open_duration_s=7).model_dump_json()
        )
        await client.set(cv.current_key("aa"), "0")
    else:  # aa's key holds a version of zz: must not reach zz's guard
        await client.rpush(
            cv.versions_key("aa"), _version("zz", 1, open_duration_s=7).model_dump_json()
        )
        await client.set(cv.current_key("aa"), "1")
    await runtime.start()
    try:
        await cv.publish(client, "db", DependencySettings(open_duration_s=12.5), "t", "x")
        await _until(lambda: db.breaker.config.open_duration_s == 12.5)
        await asyncio.sleep(0.5)  # a few resyncs: the garbage still changes nothing
        assert aa.breaker.config == aa_before
        assert zz.breaker.config == zz_before
        assert db.breaker.config.open_duration_s == 12.5
        # And the announcements are still followed (the listener is alive).
        runtime.config_subscriber.resync_interval_s = 3600
        await asyncio.sleep(0.3)
        await cv.publish(client, "db", DependencySettings(open_duration_s=13.5), "t", "y")
        await _until(lambda: db.breaker.config.open_duration_s == 13.5, timeout=2.0)
    finally:
        await runtime.stop()


@pytest.mark.parametrize(
    ("settings", "bounds"),
    [
        ({"open_duration_s": 30}, {"open_duration_s": SettingBounds(min=1e-9, max=1e-9)}),
        ({"failure_threshold": 5}, {"failure_threshold": SettingBounds(min=0.2, max=0.5)}),
        ({"failure_rate_threshold": 0.5}, {"failure_rate_threshold": SettingBounds(min=0, max=0)}),
        ({"timeout_s": 1e300}, {"timeout_s": SettingBounds(min=1e299, max=1e308)}),
        ({"open_duration_s": 30}, {"open_duration_s": SettingBounds(min=float("nan"), max=1)}),
    ],
)
def test_hand_written_bounds_never_take_a_value_past_the_hard_limits(
    settings: dict[str, float], bounds: dict[str, SettingBounds]
) -> None:
    version = _version("db", 1, **settings).model_copy(update={"bounds": bounds})
    applied, _ = clamp(version)
    for name, value in applied.model_dump(exclude_none=True).items():
        low, high = HARD_LIMITS[name]
        assert low <= value <= high, (name, value)


async def test_advise_reads_the_other_versions_when_one_is_garbage(
    own_redis: RestartableRedis, client: aioredis.Redis
) -> None:
    """``antifragile advise`` (every dependency): one unreadable version is one note."""
    from antifragile.cli.learning import versions_in_force

    await client.rpush(cv.versions_key("aa"), "garbage{")
    await client.set(cv.current_key("aa"), "1")
    good = await cv.publish(client, "db", DependencySettings(open_duration_s=9), "t", "x")
    found, note = await versions_in_force(own_redis.url, ["aa", "db"])
    assert found == {"db": good}
    assert "aa" in note and "unreadable" in note and "library defaults" in note


async def test_a_revert_is_not_failed_by_an_unreadable_older_version(
    own_redis: RestartableRedis, client: aioredis.Redis
) -> None:
    """The revert commits, then the activity read the whole history for the undone
    settings: one hand-written garbage entry failed every retry, and the ledger recorded
    FAILED a revert that was in force."""
    from activities.learning import ConfigActivities
    from antifragile.models.adaptation import PublishConfigInput
    from antifragile.policy import WorkerPolicy

    await client.rpush(cv.versions_key("db"), "garbage{")  # version 1
    await client.set(cv.current_key("db"), "1")
    await cv.publish(client, "db", DependencySettings(open_duration_s=9), "t", "v2")
    await cv.publish(client, "db", DependencySettings(open_duration_s=11), "t", "v3")
    activities = ConfigActivities(Settings(redis_url=own_redis.url), WorkerPolicy())
    result = await activities.publish_dependency_config(
        PublishConfigInput(dependency="db", request_id="r1", by="alice", settings=None)
    )
    assert result.version is not None and result.version.version == 4
    assert result.version.settings.open_duration_s == 9
    assert result.undone == DependencySettings(open_duration_s=11)


@pytest.mark.parametrize("json_out", [False, True])
async def test_history_shows_the_readable_versions_around_a_garbage_one(
    own_redis: RestartableRedis,
    client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    json_out: bool,
) -> None:
    """``advise history``: the audit trail stays readable; the bad entry is named."""
    import json

    from typer.testing import CliRunner

    from antifragile.cli import app

    await cv.publish(client, "db", DependencySettings(open_duration_s=9), "alice", "v1")
    await client.rpush(cv.versions_key("db"), "garbage{")  # version 2, and in force
    await client.set(cv.current_key("db"), "2")
    await cv.publish(client, "db", DependencySettings(open_duration_s=11), "bob", "v3")
    await client.set(cv.current_key("db"), "2")
    monkeypatch.setenv("ANTIFRAGILE_REDIS_URL", own_redis.url)
    args = ["advise", "history", "db", *(["--json"] if json_out else [])]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 0, result.output
    if json_out:
        doc = json.loads(result.stdout)
        assert [v["version"] for v in doc["versions"]] == [1, 3]
        assert doc["unreadable"] == [2] and doc["current"] == 2
    else:
        assert "alice" in result.output and "bob" in result.output
        assert "unreadable" in result.output
