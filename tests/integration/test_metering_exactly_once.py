"""Metering bills exactly what was recorded, end to end, against a real Redis.

Two writers share one instance id (as two replicas of a container would); each loses the
reply of script calls that Redis ran (a TCP proxy cuts the connection after Redis
answered); a billing consumer crashes between reading and applying, and again after
applying but before its caller saw the result, and restarts under the same name. The
group's ledger must equal what the writers recorded, unit for unit.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from antifragile.metering import MeteringIntegration, UsageConsumer, UsageTotal
from antifragile.processes import ServerProcess
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
