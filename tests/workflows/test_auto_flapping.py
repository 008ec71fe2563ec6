"""``adaptation.auto`` with advice that wobbles between batches: no version per wobble.

The open duration advised from outages moves by 0.1 s steps as outages arrive (2.8, 2.7,
2.9 s ...). Without a minimum step, every batch published a new version (a history
event pair in the ledger, an entry in Redis kept for ever, a reconfiguration of every
service): a change smaller than the policy's ``auto_min_step`` is left as it is.
"""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis
from temporalio.testing import WorkflowEnvironment

from antifragile.constants import profile_workflow_id
from antifragile.learning import config_versions
from antifragile.learning.client import apply_advice, record_observations
from antifragile.models.adaptation import ChangeOutcome
from antifragile.models.learning import DependencySettings
from antifragile.policy import AdaptationPolicyConfig, RecoveryPolicyConfig, WorkerPolicy
from antifragile.settings import Settings
from tests.conftest import WorkerFactory
from tests.workflows.auto_support import decided, outage, recent


async def until_auto(env: WorkflowEnvironment, dependency: str, request_id: str) -> None:
    change = await decided(env, dependency, request_id)
    assert change.outcome is ChangeOutcome.APPLIED, change


async def test_wobbling_advice_does_not_publish_a_version_per_batch(
    time_skipping_env: WorkflowEnvironment,
    start_worker: WorkerFactory,
    task_queue: str,
    redis_url: str,
) -> None:
    dependency = f"dep-{uuid.uuid4().hex[:8]}"
    base = await recent(time_skipping_env)
    client = time_skipping_env.client
    redis = aioredis.from_url(redis_url)
    await config_versions.publish(
        redis, dependency, DependencySettings(open_duration_s=4.0), by="ops", why="start"
    )
    auto = WorkerPolicy(
        recovery=RecoveryPolicyConfig(approvers=["alice"]),
        adaptation=AdaptationPolicyConfig(auto=True),
    )
    batches = [
        [
            outage(base, dependency, 0, 2.0),
            outage(base, dependency, 1, 2.5),
            outage(base, dependency, 2, 3.0),
        ],
        [outage(base, dependency, 3, 2.6)],  # advice 2.7 s: 4 % from 2.8
        [outage(base, dependency, 4, 2.9)],  # advice 2.9 s: 4 % from 2.8
        [outage(base, dependency, 5, 4.0), outage(base, dependency, 6, 4.0)],  # advice 3.5 s: 25 %
    ]
    async with start_worker(
        client, task_queue, policy=auto, settings=Settings(redis_url=redis_url)
    ):
        for n, batch in enumerate(batches, start=1):
            await record_observations(client, dependency, batch, task_queue=task_queue)
            if n in (1, len(batches)):
                await until_auto(time_skipping_env, dependency, f"auto-{n}")
            else:
                # A person's request queued after the auto one: decided after it (in
                # order), so its answer says the auto request was decided too.
                barrier = await apply_advice(
                    client, dependency, by="alice", settings=["guard.timeout_s"]
                )
                assert barrier.outcome is ChangeOutcome.UNCHANGED
        history = await config_versions.history(redis, dependency)
        assert [v.settings.open_duration_s for v in history] == [4.0, 2.8, 3.5]
        await client.get_workflow_handle(profile_workflow_id(dependency)).terminate()
    await redis.aclose()
