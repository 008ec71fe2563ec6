"""Record ``chaos_history_learning_completed.json``: an experiment that ends by recording
what it saw in its target's ledger (patch ``learning-observations``, issue 14).

Never overwrites the fixture when it exists: delete it on purpose first. Run from the
repository root: ``python -m tests.replay.record_chaos_history_learning``.

The run: an ERROR experiment of 10 s against an unguarded target, completed (injection,
health checks, removal, recovery verified), then the ``record_dependency_observations``
activity (signal-with-start of ``profile-replay-learning-db``, which the recording worker
runs too).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from antifragile.chaos.client import start_experiment
from antifragile.models.chaos_scenario import ChaosScenario
from antifragile.policy import ChaosPolicyConfig, WorkerPolicy
from antifragile.settings import Settings
from antifragile.stack import binaries
from antifragile.stack.processes import start_redis
from antifragile.temporal_client import ensure_search_attributes
from workers.main import all_activities
from workflows.chaos_experiment import ChaosExperimentWorkflow
from workflows.chaos_guardian import ChaosGuardianWorkflow
from workflows.dependency_profile import DependencyProfileWorkflow

HERE = Path(__file__).parent
FIXTURES: dict[str, str] = {
    "chaos_history_learning_completed.json": "chaos-replay-learning-0a1b2c3d",
}
"""Fixture file → workflow id of the recorded run."""


async def record() -> None:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binaries.temporal_test_server(),
        data_converter=pydantic_data_converter,
    )
    try:
        await ensure_search_attributes(env.client)
        for name, workflow_id in FIXTURES.items():
            path = HERE / name
            if path.exists():
                print(f"kept {path.name} (exists)")
                continue
            redis = start_redis()
            try:
                settings = Settings(redis_url=f"redis://127.0.0.1:{redis.port}/0")
                policy = WorkerPolicy(chaos=ChaosPolicyConfig(lease_ttl_s=6, max_duration_s=60))
                queue = f"record-{uuid.uuid4().hex[:6]}"
                async with Worker(
                    env.client,
                    task_queue=queue,
                    workflows=[
                        ChaosExperimentWorkflow,
                        ChaosGuardianWorkflow,
                        DependencyProfileWorkflow,
                    ],
                    activities=all_activities(settings, policy),
                ):
                    sc = ChaosScenario(
                        name="replay-learning",
                        chaos_type="ERROR",
                        target="replay-learning-db",
                        duration_s=10,
                        recovery_timeout_s=5,
                        allow_unguarded=True,
                    )
                    handle = await start_experiment(
                        env.client, sc, task_queue=queue, experiment_id=workflow_id
                    )
                    report = await handle.result()
                    print(path.name, report.outcome, report.reason)
                    path.write_text((await handle.fetch_history()).to_json())
                    guardian = env.client.get_workflow_handle(f"{handle.id}-guardian")
                    with contextlib.suppress(Exception):  # ended, or none started
                        await guardian.terminate("recording over")
            finally:
                redis.stop()
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(record())
