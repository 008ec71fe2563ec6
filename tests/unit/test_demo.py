"""The demo's parts that need no Temporal: options, timeline verdict, healthz, the audit."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from antifragile.demo.agent_bus import AgentBus
from antifragile.demo.service import HealthEndpoint, audit_stream
from antifragile.demo.stack import DemoOptions, DemoStack
from antifragile.demo.timeline import STEPS, DemoResult, Timeline, render_summary
from antifragile.errors import ConfigError
from tests.unit.conftest import RestartableRedis


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("port", 0, "--port: not a port: 0"),
        ("rate", 0, "--rate: must be 1..200000 messages/s, got 0"),
        ("chaos_duration_s", 1.0, "--chaos-duration: must be 2..120 seconds, got 1"),
        ("step_timeout_s", 1.0, "--step-timeout: at least 5 seconds, got 1"),
    ],
)
def test_bad_options_are_one_line_naming_the_flag_and_value(
    field: str, value: float, message: str
) -> None:
    options = DemoOptions(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as err:
        options.validate()
    assert str(err.value) == message


def test_a_configured_temporal_and_redis_are_used_never_started(tmp_path: Path) -> None:
    stack = DemoStack(
        DemoOptions(
            temporal_address="temporal.example:7233",
            redis_url="redis://redis.example:6379/0",
            ui_url="https://ui.example",
            data_dir=tmp_path / "never",
        )
    )
    note = stack.start()
    assert stack.started == []
    assert "configured" in note and not (tmp_path / "never").exists()
    assert stack.temporal_address == "temporal.example:7233"


def steps_at(times: dict[str, float]) -> Timeline:
    lines: list[str] = []
    t = Timeline(out=lines.append)
    t.seen = {k: (at, "") for k, at in times.items()}
    return t


def test_the_timeline_passes_only_with_every_step_in_order() -> None:
    all_in_order = {key: float(i) for i, (key, _) in enumerate(STEPS)}
    assert steps_at(all_in_order).ok
    missing = dict(all_in_order)
    del missing["probe_failed"]
    assert steps_at(missing).missing() == ["probe_failed"]
    assert not steps_at(missing).ok
    swapped = dict(all_in_order, breaker_open=0.5)  # before the fault was even seen
    t = steps_at(swapped)
    assert not t.ok
    assert t.out_of_order() == [
        "'breaker opened' came before 'fault active at the call site'",
    ]


def test_a_step_is_printed_once_with_its_time_and_detail() -> None:
    lines: list[str] = []
    t = Timeline(out=lines.append)
    t.mark("breaker_open", "db: CLOSED -> OPEN")
    t.mark("breaker_open", "again")
    assert len(lines) == 1
    assert lines[0].endswith("ok  breaker opened: db: CLOSED -> OPEN")


def test_the_summary_lists_links_and_every_missing_step() -> None:
    lines: list[str] = []
    t = Timeline(out=lines.append)
    t.mark("stack")
    result = DemoResult(t, [("recovery", "http://ui/workflows/recovery-x")], ["boom"])
    render_summary(result, lines.append, stack_started=True, keep=False)
    text = "\n".join(lines)
    assert "recovery  http://ui/workflows/recovery-x" in text
    assert f"demo FAILED: 1 of {len(STEPS)} steps happened" in text
    assert "missing: breaker opened" in text and "  - boom" in text
    assert "`antifragile dev` brings these links back" in text


async def test_healthz_answers_503_with_the_reason_until_the_dependency_works() -> None:
    healthy = False

    async def ping() -> None:
        if not healthy:
            raise ConnectionError("injected")

    endpoint = HealthEndpoint(ping)
    url = await endpoint.start()

    def get() -> int:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            assert b"ConnectionError: injected" in err.read()
            return err.code

    try:
        assert await asyncio.to_thread(get) == 503
        healthy = True
        assert await asyncio.to_thread(get) == 200
    finally:
        await endpoint.stop()
    assert endpoint.answers == {503: 1, 200: 1}


async def test_the_audit_finds_every_message_once_and_names_what_is_missing(
    own_redis: RestartableRedis,
) -> None:
    redis = aioredis.Redis.from_url(own_redis.url)
    bus = AgentBus(redis, None, stream="af:test:audit", stream_maxlen=None, persist_batch=7)
    for i in range(100):
        bus.publish("t", b"m%d" % i)
    stop = asyncio.Event()
    stop.set()
    await bus.run(stop)
    assert await audit_stream(redis, "af:test:audit", 100) == (100, 0, 0)
    # Two more "published" than persisted: the audit reports them missing.
    assert await audit_stream(redis, "af:test:audit", 102) == (100, 2, 0)
    await redis.aclose()
