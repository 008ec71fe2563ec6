"""MeteringIntegration: never-blocking record, exact accounting, real Redis outage."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_exceptions

from antifragile.errors import ConfigError
from antifragile.inprocess.metering import MeteringIntegration, UsageEvent
from antifragile.inprocess.usage_consumer import UsageConsumer, read_usage
from antifragile.inprocess.usage_stream import UsageTotal, sum_entries
from tests.redis_proxy import LostReplyProxy
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


# ------------------------------------------------------------------ item 15: exactly once


def test_flush_at_is_derived_from_max_buffer() -> None:
    assert MeteringIntegration(max_buffer=1000).flush_at == 100
    assert MeteringIntegration(max_buffer=5).flush_at == 1
    assert MeteringIntegration().flush_at == 50_000
    with pytest.raises(ConfigError, match="flush_at"):
        MeteringIntegration(max_buffer=1000, flush_at=1001)


def test_batch_ids_are_unique_across_writers_sharing_an_instance_id() -> None:
    a, b = MeteringIntegration(), MeteringIntegration()
    assert a.instance_id == b.instance_id == "local"
    assert a.writer_id != b.writer_id
    assert a.writer_id.startswith("local:")


async def test_two_writers_with_the_default_id_read_back_as_twelve(
    own_redis: RestartableRedis,
) -> None:
    a = MeteringIntegration(own_redis.url, stream="two")
    b = MeteringIntegration(own_redis.url, stream="two")
    for _ in range(5):
        a.record_usage("t", "op")
    for _ in range(7):
        b.record_usage("t", "op")
    assert await a.flush() and await b.flush()
    await a.stop()
    await b.stop()
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        assert (await read_usage(client, "two"))[("t", "op")].count == 12
        assert (await read_usage(client, "two", group="billing"))[("t", "op")].count == 12
    finally:
        await client.aclose()


async def test_a_batch_retried_after_a_lost_reply_is_stored_once(
    own_redis: RestartableRedis,
) -> None:
    proxy = LostReplyProxy(own_redis.port)
    await proxy.start()
    m = MeteringIntegration(proxy.url, stream="lost", flush_interval_s=0.01)
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        await m.start()
        proxy.lose_replies(1)
        for _ in range(100):
            m.record_usage("t", "op")
        await m.stop()
        s = m.stats()
        assert proxy.lost == 1  # Redis ran the write; the writer never got the reply
        assert (s.written, s.buffered, s.resent_batches) == (100, 0, 1)
        raw = await client.xrange("lost")
        assert len(raw) == 1  # one entry: the retry stored nothing
        assert (await read_usage(client, "lost", group="billing"))[("t", "op")].count == 100
    finally:
        await client.aclose()
        await proxy.close()


async def test_a_consumer_group_reader_bills_100_for_100_events_despite_a_duplicate(
    own_redis: RestartableRedis,
) -> None:
    # A batch stored twice (a writer before this fix, or a partly run script) is billed
    # once, even when the two copies arrive in different reads.
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        entry = {"tenant": "t", "operation": "op", "units": 100, "count": 100, "batch": "w:n:1"}
        await client.xadd("dup", entry)
        reader = UsageConsumer(client, "dup")
        first = await reader.consume()
        await client.xadd("dup", entry)  # the same batch again
        second = await reader.consume()
        assert first[("t", "op")].count == 100
        assert second == {}
        assert (await reader.totals())[("t", "op")] == UsageTotal("t", "op", 100, 100)
    finally:
        await client.aclose()


async def test_entries_read_before_a_crash_are_applied_once_after_the_restart(
    own_redis: RestartableRedis,
) -> None:
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        for i in range(10):
            await client.xadd(
                "crash",
                {"tenant": "t", "operation": "op", "units": 1, "count": 1, "batch": f"w:n:{i}"},
            )
        await UsageConsumer(client, "crash")._ensure_group()
        # A consumer that read 4 entries and died before applying them.
        await client.xreadgroup("billing", "reader", {"crash": ">"}, count=4)
        # One that read 3 more under another name and died too.
        await client.xreadgroup("billing", "gone", {"crash": ">"}, count=3)
        restarted = UsageConsumer(client, "crash", claim_idle_s=0)
        assert (await restarted.consume())[("t", "op")].count == 10
        assert await restarted.consume() == {}
        assert (await restarted.totals())[("t", "op")].count == 10
        assert (await client.xpending("crash", "billing"))["pending"] == 0
    finally:
        await client.aclose()


async def test_max_pending_keys_holds_while_redis_is_down(own_redis: RestartableRedis) -> None:
    m = MeteringIntegration(
        own_redis.url, stream="bound", flush_interval_s=0.01, max_pending_keys=100
    )
    src = CountingSource()
    m.add_source(src)
    await m.start()
    own_redis.stop()
    most = 0
    for i in range(10_000):
        m.record_usage("t", f"op{i}")
        src.n += 1
        if i % 500 == 0:
            await asyncio.sleep(0.02)  # the flusher drains and fails, again and again
            most = max(most, m.stats().pending_keys)
            check_accounting(m)
    await asyncio.sleep(0.1)
    s = m.stats()
    assert s.write_errors > 0
    assert max(most, s.pending_keys) <= 100
    assert most >= 99  # the bound was reached, and held
    assert s.dropped == 0 and s.buffered == 20_000
    own_redis.start()
    for _ in range(500):
        await asyncio.sleep(0.02)
        if m.stats().buffered == 0:
            break
    await m.stop()
    s = m.stats()
    assert (s.recorded, s.written, s.buffered, s.dropped) == (20_000, 20_000, 0, 0)
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        totals = await read_usage(client, "bound", group="billing")
        assert sum(t.count for t in totals.values()) == 20_000
        assert len(totals) == 10_001
    finally:
        await client.aclose()


def test_a_drain_never_folds_more_than_the_key_bound() -> None:
    m = MeteringIntegration(max_pending_keys=100)
    for i in range(10_000):
        m.record_usage("t", f"op{i}")
    m._drain()
    s = m.stats()
    assert s.pending_keys == 100
    assert (s.recorded, s.buffered) == (10_000, 10_000)
    m._take_batch()  # the in-flight batch counts against the bound too
    m._drain()
    assert m.stats().pending_keys == 100


async def test_stats_is_safe_from_another_thread_while_the_flusher_drains(
    own_redis: RestartableRedis,
) -> None:
    # The Prometheus scrape thread calls stats(); summing the aggregate there raised
    # "dictionary changed size during iteration" when a drain added keys meanwhile.
    m = MeteringIntegration(own_redis.url, stream="threads", flush_interval_s=0.001)
    await m.start()
    own_redis.stop()  # writes fail: the aggregate keeps growing under the reader
    errors: list[BaseException] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            try:
                m.stats()
            except BaseException as exc:
                errors.append(exc)
                return

    reader = threading.Thread(target=scrape)
    reader.start()
    try:
        for i in range(20_000):
            m.record_usage("t", f"op{i}")
            if i % 200 == 0:
                await asyncio.sleep(0.002)
    finally:
        done.set()
        reader.join(10)
        m.stop_timeout_s = 0.1
        await m.stop()
    assert errors == []
    check_accounting(m)


async def test_a_tiny_key_bound_with_a_source_still_writes_everything(
    own_redis: RestartableRedis,
) -> None:
    m = MeteringIntegration(own_redis.url, stream="tiny", max_pending_keys=2)
    src = CountingSource()
    m.add_source(src)
    with pytest.raises(ConfigError, match="max_pending_keys"):
        m.add_source(CountingSource())  # a second source would leave no pair for events
    await m.start()
    for i in range(50):
        m.record_usage("t", f"op{i}")
        src.n += 1
    await m.stop()
    s = m.stats()
    assert (s.recorded, s.written, s.buffered) == (100, 100, 0)
    assert s.batches >= 25  # at most two pairs per batch


# ------------------------------------------------------------------ review: bad settings

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_buffer", 0),
        ("max_buffer", -5),
        ("max_buffer", 1.5),
        ("max_buffer", "10"),
        ("flush_at", 0),
        ("flush_at", -1),
        ("flush_at", 2.5),
        ("max_pending_keys", 0),
        ("max_pending_keys", -1),
        ("max_batch_keys", 0),
        ("flush_interval_s", 0),
        ("flush_interval_s", NAN),
        ("flush_interval_s", INF),
        ("writer_mark_ttl_s", NAN),
        ("writer_mark_ttl_s", INF),
        ("writer_mark_ttl_s", 0),
        ("stop_timeout_s", NAN),
        ("stop_timeout_s", -1),
        ("stream_maxlen", 0),
        ("stream_maxlen", -1),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        MeteringIntegration(**{field: value})  # type: ignore[arg-type]
    message = str(err.value)
    assert "\n" not in message
    assert f"MeteringIntegration.{field}:" in message
    assert repr(value) in message


def test_flush_at_above_max_buffer_names_both() -> None:
    with pytest.raises(ConfigError, match=r"flush_at: must be in \[1, max_buffer=10\] \(got 11\)"):
        MeteringIntegration(max_buffer=10, flush_at=11)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 0),
        ("claim_idle_s", -1),
        ("claim_idle_s", NAN),
        ("dedupe_ttl_s", 0),
        ("dedupe_ttl_s", NAN),
        ("dedupe_ttl_s", -1),
    ],
)
def test_a_bad_consumer_setting_is_one_line_naming_the_field_and_value(
    field: str, value: object
) -> None:
    client = aioredis.Redis()  # never connects: construction only
    with pytest.raises(ConfigError) as err:
        UsageConsumer(client, **{field: value})  # type: ignore[arg-type]
    message = str(err.value)
    assert "\n" not in message
    assert f"UsageConsumer.{field}:" in message
    assert repr(value) in message


# ------------------------------------------------------------------ review: Redis restarts


async def consume_when_reachable(reader: UsageConsumer) -> dict[tuple[str, str], UsageTotal]:
    """consume(), retrying only broken connections (the pool's old sockets) for 10 s."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        try:
            return await reader.consume()
        except (redis_exceptions.ConnectionError, redis_exceptions.TimeoutError):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)


async def test_a_consumer_survives_redis_losing_its_group(own_redis: RestartableRedis) -> None:
    # Redis restarted without persistence (or the stream was deleted): the group is gone.
    # The long-running billing consumer must create it again, not fail with NOGROUP on
    # every call until someone restarts it.
    writer = MeteringIntegration(own_redis.url, stream="regroup")
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        reader = UsageConsumer(client, "regroup")
        for _ in range(10):
            writer.record_usage("t", "op")
        assert await writer.flush()
        assert (await reader.consume())[("t", "op")].count == 10
        own_redis.stop()
        own_redis.start()  # no persistence: stream, group and ledger are gone
        for _ in range(5):
            writer.record_usage("t", "op")
        deadline = asyncio.get_running_loop().time() + 10
        while not await writer.flush():
            assert asyncio.get_running_loop().time() < deadline
        assert (await consume_when_reachable(reader))[("t", "op")].count == 5
        await client.delete("regroup")  # deleted by hand: the same
        for _ in range(3):
            writer.record_usage("t", "op")
        assert await writer.flush()
        assert (await reader.consume())[("t", "op")].count == 3
    finally:
        await writer.stop()
        await client.aclose()


@pytest.mark.parametrize("started", [False, True])
async def test_stop_writes_what_a_source_counted_while_the_key_bound_was_full(
    own_redis: RestartableRedis, started: bool
) -> None:
    # Redis down with the key bound full: the source keeps counting in place. When Redis
    # returns, stop() wrote the held pairs and returned, leaving the source's count
    # unwritten (recorded 9, written 6): usage lost at every shutdown after an outage.
    own_redis.stop()
    m = MeteringIntegration(own_redis.url, stream="held", max_pending_keys=2, stop_timeout_s=5)
    src = CountingSource()
    m.add_source(src)
    m.record_usage("t", "op")
    src.n = 5
    assert not await m.flush()  # Redis down: both pairs held, the bound is full
    src.n += 3  # counted in place: no room to harvest
    own_redis.start()
    if started:
        await m.start()
    else:
        ok = await m.flush()
        assert ok == (m.stats().buffered == 0)  # True only when nothing is left
    await m.stop()
    s = m.stats()
    assert (s.recorded, s.written, s.buffered, s.dropped) == (9, 9, 0, 0), s
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        usage = await read_usage(client, "held")
        assert usage[("t", "guard:x")].count == 8
        assert usage[("t", "op")].count == 1
    finally:
        await client.aclose()


async def test_a_lost_apply_reply_is_still_returned_by_exactly_one_call(
    own_redis: RestartableRedis,
) -> None:
    # read_usage(group=...) promises every event is returned by exactly one call. Redis
    # applied a chunk but the reply was lost: the call raised, and the next call found
    # everything acknowledged and returned nothing - a caller summing returns billed 0
    # for 10 events (the ledger said 10).
    proxy = LostReplyProxy(own_redis.port)
    await proxy.start()
    direct = aioredis.Redis.from_url(own_redis.url)
    via_proxy = aioredis.Redis.from_url(proxy.url)
    try:
        for i in range(10):
            await direct.xadd(
                "lostack",
                {"tenant": "t", "operation": "op", "units": 2, "count": 1, "batch": f"w:n:{i}"},
            )
        billed = Counter[tuple[str, str]]()
        # A one-shot reader per call (read_usage): the retry must happen inside the call.
        proxy.lose_replies(1)
        got = await read_usage(via_proxy, "lostack", group="billing")
        assert proxy.lost == 1
        billed.update({k: v.units for k, v in got.items()})
        # A long-lived reader whose every retry inside the call fails: the next call
        # returns what the lost one applied.
        for i in range(10, 15):
            await direct.xadd(
                "lostack",
                {"tenant": "t", "operation": "op", "units": 2, "count": 1, "batch": f"w:n:{i}"},
            )
        reader = UsageConsumer(via_proxy, "lostack", consumer="long")
        proxy.lose_replies(100)
        with pytest.raises((redis_exceptions.ConnectionError, redis_exceptions.TimeoutError)):
            await reader.consume()
        proxy.heal()  # the network is back
        billed.update({k: v.units for k, v in (await reader.consume()).items()})
        assert await reader.consume() == {}
        assert billed == {("t", "op"): 30}
        assert (await reader.totals())[("t", "op")] == UsageTotal("t", "op", 30, 15)
    finally:
        await via_proxy.aclose()
        await direct.aclose()
        await proxy.close()


# ------------------------------------------------------------------ review: malformed records


async def test_one_malformed_record_neither_destroys_the_buffer_nor_breaks_the_readers(
    own_redis: RestartableRedis,
) -> None:
    # record() never raises, so a caller bug reaches the flusher: units=None (or a list as
    # tenant) made the drain raise after swapping the buffer out - the 10 good events
    # vanished (recorded 0, written 0). units=2.0 was stored as "2.0": counted written,
    # then skipped as unreadable by the billing consumer, and read_usage() without a
    # group raised ValueError for the whole stream, for ever.
    m = MeteringIntegration(own_redis.url, stream="malformed")
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        for _ in range(10):
            m.record_usage("t", "op")
        m.record_usage("t", "op", None)  # type: ignore[arg-type]
        m.record_usage(["t"], "op")  # type: ignore[arg-type]
        m.record_usage("t", "op", 1.5)  # type: ignore[arg-type]
        m.record(("t", "op"))  # type: ignore[arg-type]
        m.record_usage("t", "big", 2.0)  # type: ignore[arg-type]
        m.record_usage("t", "op", 10**20)  # no reader could bill it
        assert await m.flush()
        s = m.stats()
        check_accounting(m)
        assert (s.recorded, s.written, s.dropped, s.invalid, s.buffered) == (16, 11, 5, 5, 0)
        assert await read_usage(client, "malformed") == {
            ("t", "op"): UsageTotal("t", "op", 10, 10),
            ("t", "big"): UsageTotal("t", "big", 2, 1),
        }
        assert (await read_usage(client, "malformed", group="billing"))[("t", "big")].units == 2
        # Entries an older writer stored: "2.0" is 2; "1.5" and a foreign entry are
        # skipped, and the rest of the stream still reads.
        await client.xadd("old", {"tenant": "t", "operation": "op", "units": "2.0", "count": 1})
        await client.xadd("old", {"tenant": "t", "operation": "op", "units": "1.5", "count": 1})
        await client.xadd("old", {"something": "else"})
        await client.xadd("old", {"tenant": "t", "operation": "op", "units": 3, "count": 1})
        assert await read_usage(client, "old") == {("t", "op"): UsageTotal("t", "op", 5, 2)}
        assert await read_usage(client, "old", group="g") == {
            ("t", "op"): UsageTotal("t", "op", 5, 2)
        }
    finally:
        await m.stop()
        await client.aclose()


async def test_concurrent_flushes_store_every_batch_once(own_redis: RestartableRedis) -> None:
    # flush() from several tasks (or while the flusher runs) sent the in-flight sequence
    # twice and took the next batch in between: the high-water mark then skipped a batch
    # Redis never stored - stats said written 200, the stream held 197.
    m = MeteringIntegration(own_redis.url, stream="together", max_batch_keys=1)
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        for i in range(200):
            m.record_usage("t", f"op{i}")
        assert await asyncio.gather(*(m.flush() for _ in range(4))) == [True] * 4
        await m.start()  # and the flusher with them
        for i in range(200):
            m.record_usage("t", f"op{i}")
        assert all(await asyncio.gather(*(m.flush() for _ in range(4))))
        await m.stop()
        s = m.stats()
        assert (s.recorded, s.written, s.buffered) == (400, 400, 0)
        assert (s.batches, s.resent_batches) == (400, 0)
        usage = await read_usage(client, "together")
        assert sum(u.count for u in usage.values()) == 400
        assert await client.xlen("together") == 400
    finally:
        await client.aclose()


async def test_concurrent_consume_calls_with_a_lost_reply_return_every_event_once(
    own_redis: RestartableRedis,
) -> None:
    # Two consume() of one object at once: the second apply replaced the consumer's
    # receipt while the first one's lost reply was being retried, so the retry found
    # its entries acknowledged and neither call returned them.
    proxy = LostReplyProxy(own_redis.port)
    await proxy.start()
    direct = aioredis.Redis.from_url(own_redis.url)
    via_proxy = aioredis.Redis.from_url(proxy.url)
    try:
        reader = UsageConsumer(via_proxy, "together-c", batch_size=5)
        await reader.consume()  # creates the group
        for i in range(40):
            await direct.xadd(
                "together-c",
                {"tenant": "t", "operation": "op", "units": 1, "count": 1, "batch": f"w:n:{i}"},
            )
        proxy.lose_replies(1)
        results = await asyncio.gather(*(reader.consume() for _ in range(4)))
        assert proxy.lost == 1
        assert sum(r[("t", "op")].count for r in results if r) == 40
        assert (await reader.totals())[("t", "op")].count == 40
    finally:
        await via_proxy.aclose()
        await direct.aclose()
        await proxy.close()


class SlowConsumer(UsageConsumer):
    """Reads its entries, then stalls before applying them until released."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def _apply(self, messages: list[Any], added: dict[tuple[str, str], list[int]]) -> None:
        self.holding.set()
        await self.release.wait()
        await super()._apply(messages, added)


async def test_entries_claimed_from_a_slow_live_consumer_are_billed_once(
    own_redis: RestartableRedis,
) -> None:
    # A is alive but slow: B claims its pending entries (XAUTOCLAIM) and applies them;
    # then A wakes up and applies the same entries. Billed once, returned once.
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        for i in range(20):
            await client.xadd(
                "race", {"tenant": "t", "operation": "op", "units": 3, "count": 1, "batch": f"b{i}"}
            )
        slow = SlowConsumer(client, "race", consumer="a", claim_idle_s=None)
        task = asyncio.create_task(slow.consume())
        await asyncio.wait_for(slow.holding.wait(), 10)
        fast = UsageConsumer(client, "race", consumer="b", claim_idle_s=0)
        got_fast = await asyncio.gather(fast.consume(), fast.consume())
        slow.release.set()
        got_slow = await asyncio.wait_for(task, 10)
        returned = [r[("t", "op")].units for r in (*got_fast, got_slow) if r]
        assert sum(returned) == 60
        assert (await fast.totals())[("t", "op")] == UsageTotal("t", "op", 60, 20)
        assert (await client.xpending("race", "billing"))["pending"] == 0
    finally:
        await client.aclose()


@pytest.mark.parametrize("redis_url", [None, "redis://127.0.0.1:1/0"])
async def test_stop_with_a_zero_timeout_returns_and_keeps_the_events(redis_url: str | None) -> None:
    # stop() woke the flusher and cancelled it in the same loop iteration: the flusher's
    # own wait_for(wake.wait()) finished and swallowed the cancellation (Python 3.11), so
    # the flusher retried for ever and stop() never returned.
    m = MeteringIntegration(redis_url, stop_timeout_s=0)
    await m.start()
    for _ in range(5):
        m.record_usage("t", "op")
    await asyncio.sleep(0.05)  # the flusher is waiting for its next round
    await asyncio.wait_for(m.stop(), 30)  # a bound for the test only
    assert m._task is None
    s = m.stats()
    assert (s.recorded, s.buffered) == (5, 5)
    check_accounting(m)


async def test_counters_read_from_another_thread_never_go_down(
    own_redis: RestartableRedis,
) -> None:
    # Prometheus reads stats() on its scrape thread and exports recorded/written/dropped
    # as counters: a counter that goes down is read as a process restart (a reset), and
    # rate() shows a bogus spike. recorded was summed from fields a drain changes one
    # after the other (buffer swapped out, then taken counted), so a read in between
    # dipped. Each read must also satisfy recorded == written + buffered + dropped.
    m = MeteringIntegration(own_redis.url, stream="mono", flush_interval_s=0.001)
    src = CountingSource()
    m.add_source(src)
    await m.start()
    done = threading.Event()
    problems: list[str] = []

    def scrape() -> None:
        last = None
        while not done.is_set():
            s = m.stats()
            if s.recorded != s.written + s.buffered + s.dropped:
                problems.append(f"inconsistent {s}")
            if last is not None and (
                s.recorded < last.recorded or s.written < last.written or s.dropped < last.dropped
            ):
                problems.append(f"went down: {last} -> {s}")
            last = s

    reader = threading.Thread(target=scrape)
    reader.start()
    try:
        for i in range(60_000):
            m.record_usage("t", f"op{i % 5000}")
            if i % 100 == 0:
                src.n += 7
                await asyncio.sleep(0)
            if i == 30_000:
                own_redis.stop()  # and while writes fail
    finally:
        done.set()
        reader.join(10)
        m.stop_timeout_s = 0.1
        await m.stop()
    assert problems[:3] == []


class CutAfterFirstChunk(UsageConsumer):
    """Its connection is cut (CLIENT KILL) right after its first chunk was applied."""

    def __init__(self, *args: Any, killer: aioredis.Redis, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.killer = killer
        self.cut = False

    async def _apply(self, messages: list[Any], added: dict[tuple[str, str], list[int]]) -> None:
        await super()._apply(messages, added)
        if not self.cut:
            self.cut = True
            await self.killer.client_kill_filter(_type="normal", skipme=True)


async def test_usage_applied_before_a_failure_later_in_the_call_is_still_returned(
    own_redis: RestartableRedis,
) -> None:
    # consume() applied a chunk (confirmed), then Redis failed on the next read: the call
    # raised, and that chunk - acknowledged and in the ledger - was returned by no call.
    direct = aioredis.Redis.from_url(own_redis.url)
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        for i in range(12):
            await direct.xadd(
                "cut", {"tenant": "t", "operation": "op", "units": 1, "count": 1, "batch": f"b{i}"}
            )
        reader = CutAfterFirstChunk(client, "cut", batch_size=5, killer=direct)
        returned = 0
        for _ in range(5):
            with contextlib.suppress(redis_exceptions.ConnectionError):
                returned += sum(t.count for t in (await reader.consume()).values())
        assert reader.cut
        assert (await reader.totals())[("t", "op")].count == 12
        assert returned == 12
    finally:
        await client.aclose()
        await direct.aclose()


async def test_an_entry_whose_units_overflow_the_ledger_is_skipped_not_half_applied(
    own_redis: RestartableRedis,
) -> None:
    # units = 10**20 read as an int, then HINCRBY failed inside the apply script: Redis
    # does not roll a script back, so the entries before it were acknowledged and billed
    # while the call raised - they were returned by no call.
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        for i, units in enumerate([1, 2, 10**20, 4]):
            await client.xadd(
                "huge",
                {"tenant": "t", "operation": "op", "units": units, "count": 1, "batch": f"b{i}"},
            )
        reader = UsageConsumer(client, "huge")
        got = await reader.consume()
        assert got == {("t", "op"): UsageTotal("t", "op", 7, 3)}
        assert await reader.consume() == {}
        assert await reader.totals() == {("t", "op"): UsageTotal("t", "op", 7, 3)}
        assert await read_usage(client, "huge") == {("t", "op"): UsageTotal("t", "op", 7, 3)}
    finally:
        await client.aclose()


async def test_consume_returns_while_entries_keep_arriving(own_redis: RestartableRedis) -> None:
    # A writer adds an entry before every read: without a per-call limit, consume()
    # never ran out of new entries and never returned.
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        reader = UsageConsumer(client, "busy", batch_size=2, max_entries_per_call=5)
        entry = {"tenant": "t", "operation": "op", "units": 1, "count": 1}
        read = client.xreadgroup
        serial = iter(range(1_000_000))

        async def xreadgroup_while_writing(*args: Any, **kwargs: Any) -> Any:
            await client.xadd("busy", {**entry, "batch": f"w:n:{next(serial)}"})
            return await read(*args, **kwargs)

        client.xreadgroup = xreadgroup_while_writing  # type: ignore[method-assign]
        async with asyncio.timeout(10):
            first = await reader.consume()
            second = await reader.consume()
        assert first[("t", "op")].count == 5  # the limit, not everything there is
        assert second[("t", "op")].count == 5  # the next call goes on where it stopped
        assert (await reader.totals())[("t", "op")].count == 10
    finally:
        await client.aclose()


def test_max_entries_per_call_is_checked() -> None:
    with pytest.raises(ConfigError, match="max_entries_per_call"):
        UsageConsumer(aioredis.Redis(), max_entries_per_call=0)
