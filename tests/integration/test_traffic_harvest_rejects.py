"""The harvester when Temporal refuses one ledger for good (a real dev server and Redis).

A dependency whose ledger can never be started (its workflow id is over the server's
length limit) must not keep every other dependency's windows from their ledgers, nor be
retried for ever.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from temporalio.client import Client

from antifragile.constants import REDIS_HEALTH_KEY_PREFIX
from antifragile.models.learning import LatencyHistogram, TrafficObservation
from workers.traffic_harvest import TrafficHarvester

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def window(dependency: str, calls: int) -> dict[str, object]:
    return TrafficObservation(
        dependency=dependency,
        source_id=f"inst/{START.isoformat()}",
        window_start=START,
        window_s=60.0,
        calls=calls,
        failures=0,
        breaker_openings=0,
        latency=LatencyHistogram(counts=[calls]),
    ).model_dump(mode="json")


async def test_a_ledger_refused_for_good_does_not_block_the_others(
    temporal_client: Client, redis_server: object, task_queue: str
) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/9"  # type: ignore[attr-defined]
    bad = "a" * 1100  # sorted first; profile-aaaa... is over the 1000-character id limit
    good = f"db-{uuid.uuid4().hex[:8]}"
    snapshot = {
        "instance": "inst",
        "traffic": {
            "window_s": 60.0,
            "dependencies": {
                bad: {"previous": window(bad, 3)},
                good: {"previous": window(good, 4)},
            },
        },
    }
    redis = aioredis.from_url(url)
    key = f"{REDIS_HEALTH_KEY_PREFIX}{uuid.uuid4().hex}"
    await redis.set(key, json.dumps(snapshot))
    try:
        harvester = TrafficHarvester(
            temporal_client, url, task_queue, wall=lambda: START.timestamp() + 75
        )
        await harvester.harvest_once()
        assert harvester.stats.sent == 1, harvester.stats
        assert harvester.stats.rejected == 1
        # The good ledger was started with its window (no worker here: not run yet).
        started = await temporal_client.get_workflow_handle(f"profile-{good}").describe()
        assert started.id == f"profile-{good}"
        # The refused window is not retried at every harvest.
        await harvester.harvest_once()
        assert harvester.stats.rejected == 1 and harvester.stats.temporal_errors == 0
    finally:
        await redis.delete(key)
        await redis.aclose()
        handle = temporal_client.get_workflow_handle(f"profile-{good}")
        with contextlib.suppress(Exception):  # not started: nothing to clean
            await handle.terminate()
