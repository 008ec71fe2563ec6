"""The traffic harvester on real Redis and a real dev server: two runtimes with guards
making calls in 1 s windows; the ledger gets one coalesced observation per window whose
calls are the sum of both instances'; a Redis cut and a second harvester (a restart)
neither crash it nor double count."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.client import Client

from antifragile.inprocess.runtime import Runtime
from antifragile.learning.client import get_profile
from antifragile.models.learning import TrafficObservation
from antifragile.settings import Settings
from workers.traffic_harvest import TrafficHarvester

pytestmark = pytest.mark.integration

WINDOW_S = 1.0
GRACE_S = 0.4


class CuttableProxy:
    """TCP proxy to Redis that can be cut (listener and connections closed) and restored."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


async def test_harvester_coalesces_windows_survives_redis_cut_and_restart(
    temporal_client: Client, start_worker: Any, task_queue: str, redis_server: Any
) -> None:
    redis_url = f"redis://127.0.0.1:{redis_server.port}/7"  # a database of this test's own
    dependency = f"dep-{uuid.uuid4().hex[:8]}"
    settings = Settings(task_queue=task_queue, redis_url=redis_url)
    truth: dict[datetime, int] = defaultdict(int)  # window start -> calls of both instances
    runtimes = []
    for name in ("th-a", "th-b"):
        rt = Runtime(
            settings,
            instance_id=f"{name}-{dependency}",
            temporal_client=temporal_client,
            metering=False,
            fault_plane=False,
            config_plane=False,
            publish_interval_s=0.1,
            bridge_options={"publish_coalesce_s": 0.05},
            traffic_window_s=WINDOW_S,
        )
        rotate = rt.traffic.rotate

        def counted_rotate(rt: Runtime = rt, rotate: Any = rotate) -> None:
            start = rt.traffic.window_start
            rotate()
            done = rt.traffic.finished.get(dependency)
            if done is not None:
                truth[datetime.fromtimestamp(start, UTC)] += done.traffic.calls

        rt.traffic.rotate = counted_rotate  # type: ignore[method-assign]
        runtimes.append(rt)
    guards = [rt.guard(dependency, recovery=False) for rt in runtimes]

    async def ok() -> None:
        await asyncio.sleep(0.003)

    async def traffic(guard: Any) -> None:
        while True:
            await guard.call(ok)

    proxy = CuttableProxy(redis_server.port)
    await proxy.start()
    harvester = TrafficHarvester(
        temporal_client,
        f"redis://127.0.0.1:{proxy.port}/7",
        task_queue,
        window_s=WINDOW_S,
        grace_s=GRACE_S,
    )

    async def next_harvest(h: TrafficHarvester) -> None:
        h.harvested.clear()
        await asyncio.wait_for(h.harvested.wait(), 10)

    async with start_worker(temporal_client, task_queue):
        for rt in runtimes:
            await rt.start()
        callers = [asyncio.create_task(traffic(g)) for g in guards]
        try:
            await harvester.start()
            while harvester.stats.sent < 2:
                await next_harvest(harvester)
            # Redis cut for two harvests: skipped, logged, the harvester lives on.
            await proxy.cut()
            await next_harvest(harvester)
            await next_harvest(harvester)
            assert harvester.stats.redis_errors >= 2
            await proxy.start()
            sent_before = harvester.stats.sent
            while harvester.stats.sent <= sent_before:
                await next_harvest(harvester)
            # A second harvester (a restarted worker) sends the same window again: the
            # ledger must keep it once.
            await next_harvest(harvester)
            again = TrafficHarvester(
                temporal_client, redis_url, task_queue, window_s=WINDOW_S, grace_s=GRACE_S
            )
            await again.harvest_once()
            assert again.stats.sent >= 1, (again.stats, harvester.stats, time.time())
            assert set(again.stats.sent_ids) <= set(harvester.stats.sent_ids)
            assert harvester._task is not None and not harvester._task.done()
        finally:
            for task in callers:
                task.cancel()
            await harvester.stop()
            for rt in runtimes:
                await rt.stop()
            with contextlib.suppress(Exception):
                await proxy.cut()

        windows: list[TrafficObservation] = []
        for _ in range(100):  # the last signal may still be in the ledger's task queue
            view = await get_profile(temporal_client, dependency)
            assert view is not None
            windows = [o for o in view.observations if isinstance(o, TrafficObservation)]
            if len(windows) >= harvester.stats.sent:
                break
            await asyncio.sleep(0.1)
    ids = [o.source_id for o in windows]
    assert len(ids) == len(set(ids)) == harvester.stats.sent
    assert len(windows) >= 3
    for o in windows:
        assert o.source_id == o.window_start.isoformat()
        assert o.calls == truth[o.window_start] > 0, o.source_id
        assert sum(o.latency.counts) == o.calls
