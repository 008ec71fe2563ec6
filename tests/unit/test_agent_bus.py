"""The demo agent bus: every message delivered once and persisted in order, also across
an open breaker (kept in the outbox, written when the breaker lets calls through)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from antifragile.demo.agent_bus import AgentBus, decode_batch
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.runtime import Runtime
from antifragile.settings import Settings
from tests.unit.conftest import RestartableRedis


async def persisted(client: aioredis.Redis, stream: str) -> list[tuple[int, str, bytes]]:
    out: list[tuple[int, str, bytes]] = []
    for _, fields in await client.xrange(stream):
        out.extend(decode_batch(fields))
    return out


async def delivered(bus: AgentBus, n: int) -> None:
    for _ in range(500):
        if bus.stats.delivered >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{bus.stats.delivered} of {n} delivered")


async def test_unguarded_bus_delivers_and_persists_every_message_in_order(
    own_redis: RestartableRedis,
) -> None:
    client = aioredis.from_url(own_redis.url)
    try:
        bus = AgentBus(client, None, stream="s1", persist_batch=100)
        stop = asyncio.Event()
        runner = asyncio.create_task(bus.run(stop))
        for i in range(1_000):
            bus.publish(("plan", "act")[i & 1], b"m%d" % i, at_ns=0 if i == 0 else None)
            if i % 64 == 0:
                await asyncio.sleep(0)
        stop.set()
        await runner
        assert (bus.stats.published, bus.stats.delivered, bus.stats.persisted) == (1000,) * 3
        assert bus.queued == 0 and bus.outbox == 0
        assert len(bus.latencies_ns) == 1000
        assert bus.latencies_ns[0] > 10**6  # at_ns=0: counted from the given time
        rows = await persisted(client, "s1")
        assert [seq for seq, _, _ in rows] == list(range(1, 1001))
        assert rows[1] == (2, "act", b"m1")
    finally:
        await client.aclose()


async def test_open_breaker_keeps_the_outbox_and_writes_it_once_closed(
    own_redis: RestartableRedis,
) -> None:
    client = aioredis.from_url(own_redis.url)
    runtime = Runtime(
        Settings(redis_url=own_redis.url), instance_id="bus-1", bridge=False, metering=False
    )
    try:
        bus = AgentBus(
            client,
            runtime,
            stream="s2",
            breaker_config=CircuitBreakerConfig(open_duration_s=60),
        )
        runtime.breakers["redis"].force_open()
        stop = asyncio.Event()
        runner = asyncio.create_task(bus.run(stop))
        for _ in range(500):
            bus.publish("observe", b"x")
        await delivered(bus, 500)
        await asyncio.sleep(0.1)
        assert bus.outbox == 500 and bus.stats.persisted == 0  # refused, nothing tried
        runtime.breakers["redis"].reset()
        stop.set()
        await runner  # the final flush writes the outbox
        assert bus.outbox == 0 and bus.stats.persisted == 500
        assert [seq for seq, _, _ in await persisted(client, "s2")] == list(range(1, 501))
    finally:
        await client.aclose()


async def test_outbox_is_bounded_and_drops_the_oldest(own_redis: RestartableRedis) -> None:
    client = aioredis.from_url(own_redis.url)
    runtime = Runtime(
        Settings(redis_url=own_redis.url), instance_id="bus-2", bridge=False, metering=False
    )
    try:
        bus = AgentBus(client, runtime, stream="s3", outbox_limit=100)
        runtime.breakers["redis"].force_open()
        stop = asyncio.Event()
        runner = asyncio.create_task(bus.run(stop))
        for _ in range(250):
            bus.publish("act", b"x")
        await delivered(bus, 250)
        assert bus.outbox == 100 and bus.stats.outbox_dropped == 150
        runtime.breakers["redis"].reset()
        stop.set()
        await runner
        assert [seq for seq, _, _ in await persisted(client, "s3")] == list(range(151, 251))
    finally:
        await client.aclose()
