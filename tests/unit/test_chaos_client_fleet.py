"""The chaos client's fleet operations, called directly (no CLI): each says what it did
and did not do, and never raises for one unreachable server on an emergency path.

Real Redis; Temporal at an address where nothing listens. The full paths against a dev
server are in ``tests/integration/test_chaos_client.py``.
"""

from __future__ import annotations

import json

import pytest

from antifragile.chaos.client import resume_fleet, stop_all_experiments
from antifragile.chaos.plane import FaultPlane
from antifragile.cli._common import console
from antifragile.cli._render.chaos import halt_error_text, render_fleet_stop, temporal_error_text
from antifragile.models.chaos import EmergencyStopSignal
from antifragile.models.chaos_fleet import FleetStopResult, TemporalStop
from antifragile.settings import Settings
from antifragile.temporal_client import TemporalUnavailableError

NOWHERE_TEMPORAL = "127.0.0.1:1"
NOWHERE_REDIS = "redis://127.0.0.1:1/0"


def _settings(redis_url: str) -> Settings:
    return Settings(temporal_address=NOWHERE_TEMPORAL, redis_url=redis_url)


async def _halt(redis_url: str) -> tuple[bool, str]:
    plane = FaultPlane.from_url(redis_url)
    try:
        halt = await plane.halt_status()
        return halt.halted, halt.reason
    finally:
        await plane.close()


async def test_stop_all_with_temporal_unreachable_still_writes_the_halt(redis_url: str) -> None:
    settings = _settings(redis_url)
    signal = EmergencyStopSignal(reason="client test", by="pytest")
    result = await stop_all_experiments(settings, signal, wait_s=1)
    try:
        assert result.halt_set and not result.nothing_stopped and not result.complete
        assert not result.temporal.reached and result.temporal.signalled == []
        assert isinstance(result.temporal.connect_error, TemporalUnavailableError)
        assert await _halt(redis_url) == (True, "client test")
        # The result serialises, errors as their text.
        dumped = json.loads(result.model_dump_json())
        assert dumped["halt_error"] is None
        assert "TemporalUnavailableError" in dumped["temporal"]["connect_error"]
        assert NOWHERE_TEMPORAL in temporal_error_text(result.temporal, settings)
    finally:
        resumed = await resume_fleet(settings)
    # Resume clears the switch even though Temporal is unreachable, and says so.
    assert resumed.halt_was_set and resumed.schedules_resumed is None
    assert isinstance(resumed.schedules_error, TemporalUnavailableError)
    assert (await _halt(redis_url))[0] is False


async def test_stop_all_with_both_unreachable_stops_nothing_and_says_why() -> None:
    settings = _settings(NOWHERE_REDIS)
    result = await stop_all_experiments(settings, EmergencyStopSignal(reason="x"), wait_s=1)
    assert result.nothing_stopped and not result.halt_set
    assert halt_error_text(result, settings) == (
        "cannot reach Redis at redis://127.0.0.1:1/0: connection refused"
    )


async def test_resume_with_redis_unreachable_raises_and_does_nothing() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    with pytest.raises((RedisConnectionError, OSError)):
        await resume_fleet(_settings(NOWHERE_REDIS))


async def test_a_given_plane_is_used_and_left_open(redis_url: str) -> None:
    plane = FaultPlane.from_url(redis_url)
    try:
        settings = _settings(NOWHERE_REDIS)  # the plane given wins over the settings' URL
        result = await stop_all_experiments(
            settings, EmergencyStopSignal(reason="own plane"), wait_s=1, plane=plane
        )
        assert result.halt_set
        assert (await plane.halt_status()).reason == "own plane"
        assert (await resume_fleet(settings, plane=plane)).halt_was_set
    finally:
        await plane.close()


def test_a_partial_stop_is_rendered_as_what_was_and_was_not_done() -> None:
    settings = Settings(temporal_address="t:7233", redis_url="redis://:pw@r:6379/0")
    result = FleetStopResult(
        halt_error=ConnectionRefusedError(111, "Connection refused"),
        temporal=TemporalStop(
            signalled=["chaos-a-1", "chaos-b-2"],
            left=["chaos-b-2"],
            schedules_paused=1,
            not_signalled={"chaos-c-3": TimeoutError("timed out")},
        ),
        wait_s=5,
    )
    with console.capture() as out:
        not_done = render_fleet_stop(result, settings)
    assert out.get().strip() == (
        "halt switch NOT set; 2 experiment(s) signalled, 1 cleaned up; 1 schedule(s) paused"
    )
    assert not_done == (
        "halt switch not written (cannot reach Redis at redis://:***@r:6379/0: "
        "connection refused); chaos-c-3 not signalled: timed out; not cleaned up within 5s: "
        "chaos-b-2 (their faults still end with their lease TTL at every call site)"
    )
    assert "pw" not in not_done
