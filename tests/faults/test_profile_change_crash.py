"""A worker SIGKILLed between a change's authorization and its publish: one version only.

Real dev server, Redis and the worker as a subprocess. The first worker's Redis URL points
where nothing listens, so the ledger authorizes the request and then waits on its retried
read of the version in force; the worker is killed there. A worker with the real Redis
takes over: the request is published exactly once, and answered as APPLIED.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from antifragile.constants import SIGNAL_APPLY_ADVICE, profile_workflow_id
from antifragile.learning import config_versions
from antifragile.learning.client import get_change, record_observations
from antifragile.models.adaptation import ApplyAdviceSignal, ChangeOutcome
from antifragile.models.learning import OutageObservation
from antifragile.stack.processes import ServerProcess
from tests.helpers import WorkerProcess, stack_env, wait_for

pytestmark = pytest.mark.integration


async def test_a_worker_killed_before_the_publish_publishes_once_after_restart(
    temporal_client: Client,
    dev_server: ServerProcess,
    redis_url: str,
    task_queue: str,
    worker_process: Callable[[dict[str, str]], WorkerProcess],
) -> None:
    dependency = f"crash-{task_queue}"
    base = datetime.now(UTC) - timedelta(minutes=30)
    outages = [
        OutageObservation(
            dependency=dependency,
            source_id=f"r-{i}/run",
            started_at=base + timedelta(minutes=i),
            recovered_at=base + timedelta(minutes=i, seconds=2 + i / 2),
            outcome="SUCCEEDED",
        )
        for i in range(3)
    ]
    down = stack_env(dev_server, "redis://127.0.0.1:1/0", task_queue)
    first = worker_process(down)
    handle = temporal_client.get_workflow_handle(profile_workflow_id(dependency))
    try:
        await record_observations(temporal_client, dependency, outages, task_queue=task_queue)
        request = ApplyAdviceSignal(request_id=uuid.uuid4().hex, approver="alice")
        await handle.signal(SIGNAL_APPLY_ADVICE, request)

        async def authorized_and_reading() -> bool:
            history = await handle.fetch_history()
            done = [
                e
                for e in history.events
                if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
            ]
            desc = await handle.describe()
            pending = desc.raw_description.pending_activities
            return bool(done) and any(p.attempt >= 2 for p in pending)

        await wait_for(authorized_and_reading, timeout=60)
        first.kill()
        worker_process(stack_env(dev_server, redis_url, task_queue))

        async def decided() -> object:
            return await get_change(temporal_client, dependency, request.request_id)

        change = await wait_for(decided, timeout=60)
        assert change.outcome is ChangeOutcome.APPLIED, change
        redis = aioredis.from_url(redis_url)
        try:
            versions = await config_versions.history(redis, dependency)
        finally:
            await redis.aclose()
        assert [v.version for v in versions] == [1]
        assert versions[0].settings == change.after
    finally:
        await handle.terminate("test over")
