"""MeteringIntegration: never-blocking record, exact accounting, real Redis outage."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from antifragile.metering import MeteringIntegration, UsageEvent, read_usage, sum_entries
from tests.unit.conftest import RestartableRedis


def check_accounting(m: MeteringIntegration) -> None:
    s = m.stats()
    assert s.recorded == s.written + s.buffered + s.dropped, s


def test_record_without_start_buffers_and_counts() -> None:
    m = MeteringIntegration(max_buffer=10, flush_at=10)
    ev = UsageEvent("t1", "op")
    for _ in range(7):
        m.record(ev)
    m.record_usage("t2", "op", 3)
    s = m.stats()
    assert (s.recorded, s.buffered, s.written, s.dropped) == (8, 8, 0, 0)


def test_full_buffer_counts_drops_and_never_raises() -> None:
    m = MeteringIntegration(max_buffer=5, flush_at=3)
    for _ in range(12):
        m.record(UsageEvent("t", "op"))
    s = m.stats()
    assert (s.recorded, s.buffered, s.dropped) == (12, 5, 7)
    check_accounting(m)


async def test_flusher_writes_aggregated_entries_a_consumer_group_can_sum(
    own_redis: RestartableRedis,
) -> None:
    m = MeteringIntegration(own_redis.url, stream="s1", flush_interval_s=0.01, instance_id="i1")
    await m.start()
    for i in range(1000):
        m.record(UsageEvent(f"t{i % 3}", "read", 1 + i % 2))
    m.record_usage("t9", "write", 50)
    await m.stop()
    s = m.stats()
    assert (s.recorded, s.written, s.buffered, s.dropped) == (1001, 1001, 0, 0)
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        totals = await read_usage(client, "s1", group="billing")
        assert sum(t.count for t in totals.values()) == 1001
        assert totals[("t9", "write")].units == 50
        assert sum(t.units for k, t in totals.items() if k[1] == "read") == 1500
        assert await read_usage(client, "s1", group="billing") == {}  # all acknowledged
        raw = await client.xrange("s1", count=1)
        fields = {k.decode(): v.decode() for k, v in raw[0][1].items()}
        assert set(fields) == {"tenant", "operation", "units", "count", "instance", "batch"}
        assert fields["instance"] == "i1"
    finally:
        await client.aclose()


async def test_redis_outage_mid_load_loses_nothing(own_redis: RestartableRedis) -> None:
    m = MeteringIntegration(
        own_redis.url, stream="s2", flush_interval_s=0.01, max_buffer=100_000, flush_at=5_000
    )
    await m.start()
    sent_units = 0
    sent = 0

    async def load(n: int) -> None:
        nonlocal sent_units, sent
        for i in range(n):
            units = 1 + i % 5
            m.record(UsageEvent(f"t{i % 7}", "op", units))
            sent += 1
            sent_units += units
            if i % 1000 == 0:
                await asyncio.sleep(0)
                check_accounting(m)

    await load(20_000)
    await asyncio.sleep(0.05)
    written_before = m.stats().written
    assert written_before > 0
    own_redis.stop()  # real outage in the middle of the load
    await load(30_000)
    await asyncio.sleep(0.1)
    during = m.stats()
    assert during.write_errors > 0
    assert during.buffered > 0
    check_accounting(m)
    own_redis.start()  # same port: the client reconnects
    await load(20_000)
    for _ in range(200):
        await asyncio.sleep(0.02)
        if m.stats().buffered == 0:
            break
    await m.stop()
    s = m.stats()
    assert (s.recorded, s.written, s.buffered, s.dropped) == (sent, sent, 0, 0)
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        totals = await read_usage(client, "s2")
    finally:
        await client.aclose()
    # The stream lost what was written before the (non-persistent) Redis restart;
    # everything written after it is there: nothing recorded during the outage is lost.
    assert sum(t.count for t in totals.values()) == sent - written_before
    assert sum(t.units for t in totals.values()) <= sent_units


async def test_stop_flushes_everything_buffered(own_redis: RestartableRedis) -> None:
    m = MeteringIntegration(own_redis.url, stream="s3", flush_interval_s=60)
    await m.start()
    for _ in range(500):
        m.record_usage("t", "op", 2)
    assert m.stats().written == 0
    await m.stop()
    s = m.stats()
    assert (s.written, s.buffered) == (500, 0)


async def test_stop_with_redis_down_keeps_events_buffered(own_redis: RestartableRedis) -> None:
    m = MeteringIntegration(own_redis.url, stream="s4", stop_timeout_s=0.3)
    await m.start()
    own_redis.stop()
    for _ in range(100):
        m.record_usage("t", "op")
    await m.stop()
    s = m.stats()
    assert (s.recorded, s.written, s.buffered, s.dropped) == (100, 0, 100, 0)


class CountingSource:
    def __init__(self) -> None:
        self.n = 0

    def harvest_usage(self) -> tuple[str, str, int, int]:
        n, self.n = self.n, 0
        return ("t", "guard:x", n, n)

    def pending_usage(self) -> int:
        return self.n


async def test_counter_sources_are_harvested_and_accounted(own_redis: RestartableRedis) -> None:
    m = MeteringIntegration(own_redis.url, stream="s5", flush_interval_s=0.01)
    src = CountingSource()
    m.add_source(src)
    src.n = 40
    check_accounting(m)
    assert m.stats().recorded == 40
    await m.start()
    src.n += 2
    await m.stop()
    s = m.stats()
    assert (s.recorded, s.written, s.buffered) == (42, 42, 0)


def test_sum_entries_drops_a_resent_batch() -> None:
    entry = {b"tenant": b"t", b"operation": b"op", b"units": b"5", b"count": b"2", b"batch": b"i:1"}
    other = dict(entry)
    other[b"batch"] = b"i:2"
    totals = sum_entries([entry, entry, other])
    assert totals[("t", "op")].units == 10
    assert totals[("t", "op")].count == 4
