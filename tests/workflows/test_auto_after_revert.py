"""``adaptation.auto`` after a person reverted: the machine does not redo what a person undid.

An operator reverts the ledger's own change (it hurt); the next batch that moves the
advice must not publish it again. Auto resumes once a person applies a version again.
"""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis
from temporalio.testing import WorkflowEnvironment

from antifragile.constants import profile_workflow_id
from antifragile.learning import config_versions
from antifragile.learning.client import apply_advice, record_observations, revert_config
from antifragile.models.adaptation import ChangeOutcome
from antifragile.models.learning import DependencySettings
from antifragile.policy import AdaptationPolicyConfig, RecoveryPolicyConfig, WorkerPolicy
from antifragile.settings import Settings
from tests.conftest import WorkerFactory
from tests.workflows.auto_support import outage, recent
from tests.workflows.test_auto_flapping import until_auto


async def test_auto_does_not_redo_a_change_a_person_reverted(
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
    first = [
        outage(base, dependency, 0, 2.0),
        outage(base, dependency, 1, 2.5),
        outage(base, dependency, 2, 3.0),
    ]
    async with start_worker(
        client, task_queue, policy=auto, settings=Settings(redis_url=redis_url)
    ):
        await record_observations(client, dependency, first, task_queue=task_queue)
        await until_auto(time_skipping_env, dependency, "auto-1")  # 4.0 -> 2.8 (v2)
        reverted = await revert_config(client, dependency, by="alice", note="it hurt")
        assert reverted.version == 3
        # New outages move the advice (4.0 -> 3.2 s, in the band): auto must leave the
        # person's revert be.
        more = [outage(base, dependency, 5, 3.2), outage(base, dependency, 6, 3.4)]
        await record_observations(client, dependency, more, task_queue=task_queue)
        barrier = await apply_advice(client, dependency, by="alice", settings=["guard.timeout_s"])
        assert barrier.outcome is ChangeOutcome.UNCHANGED
        in_force = await config_versions.current(redis, dependency)
        assert in_force is not None and in_force.version == 3, in_force
        assert in_force.settings.open_duration_s == 4.0
        await client.get_workflow_handle(profile_workflow_id(dependency)).terminate()
    await redis.aclose()
