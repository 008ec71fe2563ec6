"""``adaptation.auto`` whose change is lost to a Redis outage is offered again.

Before: an auto change that ended FAILED (Redis not written after its tries) was never
retried while the advice stayed the same; the ledger waited for the advice to move, which
for a stable dependency is never. Now the next batch offers it again.
"""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis
from temporalio.testing import WorkflowEnvironment

from antifragile.constants import profile_workflow_id
from antifragile.learning import config_versions
from antifragile.learning.client import record_observations
from antifragile.models.adaptation import ChangeOutcome
from antifragile.models.learning import DependencySettings
from antifragile.settings import Settings
from antifragile.stack.processes import start_redis
from tests.conftest import WorkerFactory
from tests.workflows.auto_support import AUTO_POLICY, decided, outage, recent


async def test_an_auto_change_lost_to_a_redis_outage_is_offered_again(
    time_skipping_env: WorkflowEnvironment,
    start_worker: WorkerFactory,
    task_queue: str,
) -> None:
    dependency = f"dep-{uuid.uuid4().hex[:8]}"
    base = await recent(time_skipping_env)
    client = time_skipping_env.client
    redis_server = start_redis()
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    redis = aioredis.from_url(url)
    await config_versions.publish(
        redis, dependency, DependencySettings(open_duration_s=4.0), by="ops", why="start"
    )
    auto = AUTO_POLICY
    batch = [
        outage(base, dependency, 0, 3.0),
        outage(base, dependency, 1, 3.2),
        outage(base, dependency, 2, 3.4),
    ]
    try:
        async with start_worker(client, task_queue, policy=auto, settings=Settings(redis_url=url)):
            redis_server.stop()  # Redis down when the advice first allows a change
            await record_observations(client, dependency, batch, task_queue=task_queue)
            first = await decided(time_skipping_env, dependency, "auto-1")
            assert first.outcome is ChangeOutcome.FAILED, first
            redis_server = start_redis(redis_server.port)
            redis = aioredis.from_url(url)
            await config_versions.publish(  # the Redis came back empty: its first version
                redis, dependency, DependencySettings(open_duration_s=4.0), by="ops", why="back"
            )
            # The same observations again: nothing new, the advice has not moved.
            await record_observations(client, dependency, batch, task_queue=task_queue)
            again = await decided(time_skipping_env, dependency, "auto-2")
            assert again.outcome is ChangeOutcome.APPLIED, again
            history = await config_versions.history(redis, dependency)
            assert [v.by for v in history] == ["ops", "auto"]
            assert history[-1].settings.open_duration_s == 3.3  # p75 of 3.0, 3.2, 3.4
            await client.get_workflow_handle(profile_workflow_id(dependency)).terminate()
    finally:
        await redis.aclose()
        redis_server.stop()
