"""Metering bills exactly what was recorded, end to end, against a real Redis.

Two writers share one instance id (as two replicas of a container would); each loses the
reply of script calls that Redis ran (a TCP proxy cuts the connection after Redis
answered); a billing consumer crashes between reading and applying, and again after
applying but before its caller saw the result, and restarts under the same name. The
group's ledger must equal what the writers recorded, unit for unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis import Redis as SyncRedis
from redis.exceptions import RedisError

from antifragile.inprocess.metering import MeteringIntegration
from antifragile.inprocess.usage_consumer import UsageConsumer, read_usage
from antifragile.inprocess.usage_stream import UsageTotal
from antifragile.stack.processes import ServerProcess, free_port, start_redis
from tests.redis_proxy import LostReplyProxy

pytestmark = pytest.mark.integration


class Crash(Exception):
    """The consumer process dies here."""


class DiesBeforeApplying(UsageConsumer):
    """Reads its first chunk with the real consumer group read, then dies."""

    async def _apply(self, messages: list[Any], added: dict[tuple[str, str], list[int]]) -> None:
        raise Crash


class DiesAfterApplying(UsageConsumer):
    """Applies its first chunk, then dies before its caller hears of it."""

    async def _apply(self, messages: list[Any], added: dict[tuple[str, str], list[int]]) -> None:
        await super()._apply(messages, added)
        raise Crash


async def flush(writer: MeteringIntegration) -> None:
    """Flush, retrying a write whose reply was lost (as the flusher does), within 30 s."""
    deadline = time.monotonic() + 30
    while not await writer.flush():
        assert time.monotonic() < deadline, writer.stats()
        await asyncio.sleep(0.01)


async def test_two_writers_one_id_lost_replies_and_a_consumer_restart_bill_exactly(
    redis_server: ServerProcess,
) -> None:
    stream = f"metering-{uuid.uuid4().hex[:8]}"
    proxies = [LostReplyProxy(redis_server.port) for _ in range(2)]
    for proxy in proxies:
        await proxy.start()
    writers = [
        MeteringIntegration(proxy.url, stream=stream, instance_id="svc", flush_interval_s=0.01)
        for proxy in proxies
    ]
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/0")
    recorded: Counter[tuple[str, str]] = Counter()
    units: Counter[tuple[str, str]] = Counter()

    def record(round_: int) -> None:
        for w, writer in enumerate(writers):
            for i in range(500 + 37 * w + round_):
                tenant, op, n = f"t{i % 3}", f"op{(i + w) % 4}", 1 + i % 5
                writer.record_usage(tenant, op, n)
                recorded[(tenant, op)] += 1
                units[(tenant, op)] += n

    try:
        for proxy in proxies:
            proxy.lose_replies(1)  # the first batch of each writer
        record(0)
        for writer in writers:
            await flush(writer)
        # Crash 1: read entries through the group, die before applying them.
        with pytest.raises(Crash):
            await DiesBeforeApplying(client, stream, consumer="biller", batch_size=5).consume()
        assert (await client.xpending(stream, "billing"))["pending"] == 5
        for round_ in range(1, 4):
            if round_ != 2:
                for proxy in proxies:
                    proxy.lose_replies(1)  # and again, mid-run
            record(round_)
            for writer in writers:
                await flush(writer)
        # Crash 2: the restarted consumer applies one chunk and dies before returning.
        with pytest.raises(Crash):
            await DiesAfterApplying(client, stream, consumer="biller", batch_size=4).consume()
        # The consumer restarts under its name and bills the rest.
        biller = UsageConsumer(client, stream, consumer="biller", batch_size=7)
        await biller.consume()
        record(4)
        for writer in writers:
            await writer.stop()
        await biller.consume()
        assert await biller.consume() == {}

        assert [p.lost for p in proxies] == [3, 3]  # Redis ran each of them
        stats = [w.stats() for w in writers]
        assert [s.resent_batches for s in stats] == [3, 3]
        assert sum(s.written for s in stats) == sum(recorded.values())
        assert all(s.buffered == 0 and s.dropped == 0 for s in stats)
        # Nothing stored twice: one entry per (batch, tenant, operation).
        entries = await client.xrange(stream)
        keys = Counter((f[b"batch"], f[b"tenant"], f[b"operation"]) for _, f in entries)
        assert max(keys.values()) == 1
        assert len({f[b"batch"] for _, f in entries}) == sum(s.batches for s in stats)
        # The bill is exactly what was recorded.
        expected = {k: UsageTotal(k[0], k[1], units[k], recorded[k]) for k in recorded}
        assert await biller.totals() == expected
        assert (await client.xpending(stream, "billing"))["pending"] == 0
    finally:
        for writer in writers:
            await writer.stop()
        await client.aclose()
        for proxy in proxies:
            await proxy.close()


def start_durable_redis(port: int, data: Path, log: Path) -> ServerProcess:
    """Redis with an append-only file fsynced before every reply (``appendfsync
    always``). With the default ``everysec`` a SIGKILL may lose writes Redis already
    confirmed (the file write is postponed while a background fsync runs): that is
    Redis's durability, which no client can make up for."""
    server = start_redis(port, data_dir=data, log_path=log)
    deadline = time.monotonic() + 30
    client = SyncRedis(port=port)
    try:
        while True:
            try:
                client.config_set("appendfsync", "always")
                return server
            except RedisError:  # still loading the file
                assert time.monotonic() < deadline
                time.sleep(0.01)
    finally:
        client.close()


async def test_redis_sigkilled_with_aof_a_writer_cancelled_mid_write_and_restarted(
    tmp_path: Path,
) -> None:
    """Redis (append-only file) is SIGKILLed under load and restarted, again and again,
    while a consumer bills; one writer's flusher is cancelled mid-write (Redis frozen) and
    the process "restarts" as a new writer (new nonce) after a lost reply. Bill, stream
    and the returns of consume() all equal what was recorded."""
    port = free_port()
    data = tmp_path / "aof"
    server = start_durable_redis(port, data, tmp_path / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    stream = "aof-metering"
    recorded = 0
    writer = MeteringIntegration(url, stream=stream, flush_interval_s=0.005, max_batch_keys=3)
    reader_client = aioredis.Redis.from_url(url)
    reader = UsageConsumer(reader_client, stream, claim_idle_s=0)
    returned = 0
    stop_billing = asyncio.Event()

    async def bill() -> None:
        nonlocal returned
        while not stop_billing.is_set():
            with contextlib.suppress(RedisError, OSError):
                returned += sum(t.count for t in (await reader.consume()).values())
            await asyncio.sleep(0.005)

    billing = asyncio.create_task(bill())
    try:
        await writer.start()
        for round_ in range(4):
            for i in range(300):
                writer.record_usage("t", f"op{i % 7}")
                recorded += 1
                if i % 50 == 0:
                    await asyncio.sleep(0.001)
            os.kill(server.pid, signal.SIGKILL)
            server.proc.wait()
            await asyncio.sleep(0.02)
            server = start_durable_redis(port, data, tmp_path / f"redis{round_}.log")
        # Freeze Redis with a batch in flight, stop the writer (its flusher is cancelled
        # mid-write), thaw: the cancelled script runs; the same writer retries it once.
        await flush(writer)
        os.kill(server.pid, signal.SIGSTOP)
        for _ in range(50):
            writer.record_usage("t", "frozen")
            recorded += 1
        writer.stop_timeout_s = 0.3
        await asyncio.sleep(0.05)  # the flusher sends the batch and waits for the reply
        await writer.stop()
        os.kill(server.pid, signal.SIGCONT)
        writer.stop_timeout_s = 20
        await writer.start()
        await writer.stop()
        assert writer.stats().buffered == 0
        assert writer.stats().resent_batches >= 1  # the cancelled write had run
        # A lost reply, then the process is gone: a new writer (new nonce) carries on.
        proxy = LostReplyProxy(port)
        await proxy.start()
        try:
            doomed = MeteringIntegration(proxy.url, stream=stream)
            proxy.lose_replies(1)
            for _ in range(20):
                doomed.record_usage("t", "lost-reply")
                recorded += 1
            assert not await doomed.flush()  # the reply never came; Redis stored it
            assert proxy.lost == 1
            doomed.stop_timeout_s = 0  # the process dies: no retry, only its socket closes
            await doomed.stop()
        finally:
            await proxy.close()
        successor = MeteringIntegration(url, stream=stream)
        for _ in range(10):
            successor.record_usage("t", "lost-reply")
            recorded += 1
        await flush(successor)
        await successor.stop()
        deadline = time.monotonic() + 30
        while sum(t.count for t in (await reader.totals()).values()) < recorded:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        stop_billing.set()
        await billing
        await writer.stop()
        await reader_client.aclose()
        server.stop()
    totals = await reader_totals_after_restart(port, data, tmp_path, stream)
    assert totals == recorded
    assert returned == recorded


async def reader_totals_after_restart(port: int, data: Path, tmp_path: Path, stream: str) -> int:
    """The bill as persisted (Redis restarted from its append-only file once more)."""
    server = start_redis(port, data_dir=data, log_path=tmp_path / "redis-final.log")
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        stream_total = sum(t.count for t in (await read_usage(client, stream)).values())
        billed = sum(t.count for t in (await UsageConsumer(client, stream).totals()).values())
        assert stream_total == billed
        return billed
    finally:
        await client.aclose()
        server.stop()
