"""Record the ``chaos_history_v2_*.json`` fixtures: paths of the shielded ending (issue 12).

Never overwrites a fixture that exists (old ones stay as recorded): delete one on purpose
first. Run from the repository root: ``python -m tests.replay.record_chaos_history_v2``.

- ``cancel_during_cleanup``: approved, running, an emergency stop, then a cancel 10 ms later
  (the ending runs shielded; the cancel only leaves a journal line).
- ``redis_outage``: Redis killed while the fault runs and kept down through the ending
  (failed renewal, unconfirmed removal, failing health measurement).
- ``injection_refused``: the preflight finds no live process guarding the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from antifragile.chaos.client import start_experiment
from antifragile.models.chaos import ChaosPhase, ChaosStatus, EmergencyStopSignal
from antifragile.models.chaos_scenario import ChaosScenario
from antifragile.models.common import ApprovalSignal
from antifragile.policy import ChaosPolicyConfig, RecoveryPolicyConfig, WorkerPolicy
from antifragile.settings import Settings
from antifragile.stack import binaries
from antifragile.stack.processes import ServerProcess, start_redis
from antifragile.temporal_client import ensure_search_attributes
from workers.main import all_activities
from workflows.chaos_experiment import ChaosExperimentWorkflow
from workflows.chaos_guardian import ChaosGuardianWorkflow

HERE = Path(__file__).parent
FIXTURES: dict[str, str] = {
    "chaos_history_v2_cancel_during_cleanup.json": "chaos-replay-v2-cancel-0a1b2c3d",
    "chaos_history_v2_redis_outage.json": "chaos-replay-v2-outage-0a1b2c3d",
    "chaos_history_v2_injection_refused.json": "chaos-replay-v2-refused-0a1b2c3d",
}
"""Fixture file → workflow id of the recorded run."""


async def _wait(handle: Any, phase: ChaosPhase) -> None:
    for _ in range(400):
        status = await handle.query("status", result_type=ChaosStatus)
        if status.phase is phase:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never reached {phase}")


async def _cancel_during_cleanup(env: WorkflowEnvironment, queue: str, redis: Any) -> Any:
    sc = ChaosScenario(
        name="replay-v2",
        chaos_type="LATENCY",
        target="replay-db",
        latency_ms=100,
        duration_s=120,
        require_approval=True,
        allow_unguarded=True,
    )
    handle = await start_experiment(
        env.client, sc, task_queue=queue, experiment_id=FIXTURES[_name(0)]
    )
    await _wait(handle, ChaosPhase.AWAITING_APPROVAL)
    await handle.signal("approve", ApprovalSignal(approver="alice", note="go"))
    await _wait(handle, ChaosPhase.RUNNING)
    await handle.signal("emergency_stop", EmergencyStopSignal(reason="drill", by="rec"))
    await asyncio.sleep(0.01)
    await handle.cancel()
    return handle


async def _redis_outage(env: WorkflowEnvironment, queue: str, redis: Any) -> Any:
    sc = ChaosScenario(
        name="replay-v2",
        chaos_type="ERROR",
        target="replay-db",
        duration_s=120,
        recovery_timeout_s=5,
        allow_unguarded=True,
    )
    handle = await start_experiment(
        env.client, sc, task_queue=queue, experiment_id=FIXTURES[_name(1)]
    )
    await _wait(handle, ChaosPhase.RUNNING)
    redis.kill()
    return handle


async def _injection_refused(env: WorkflowEnvironment, queue: str, redis: Any) -> Any:
    sc = ChaosScenario(name="replay-v2", chaos_type="LATENCY", target="nobody-guards-this")
    return await start_experiment(
        env.client, sc, task_queue=queue, experiment_id=FIXTURES[_name(2)]
    )


def _name(i: int) -> str:
    return list(FIXTURES)[i]


RUNS: list[Callable[[WorkflowEnvironment, str, Any], Awaitable[Any]]] = [
    _cancel_during_cleanup,
    _redis_outage,
    _injection_refused,
]


async def record() -> None:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binaries.temporal_test_server(),
        data_converter=pydantic_data_converter,
    )
    try:
        await ensure_search_attributes(env.client)
        for i, run in enumerate(RUNS):
            path = HERE / _name(i)
            if path.exists():
                print(f"kept {path.name} (exists)")
                continue
            redis: ServerProcess = start_redis()
            try:
                settings = Settings(redis_url=f"redis://127.0.0.1:{redis.port}/0")
                policy = WorkerPolicy(
                    recovery=RecoveryPolicyConfig(approvers=["alice"]),
                    chaos=ChaosPolicyConfig(lease_ttl_s=3, max_duration_s=120),
                )
                queue = f"record-{uuid.uuid4().hex[:6]}"
                async with Worker(
                    env.client,
                    task_queue=queue,
                    workflows=[ChaosExperimentWorkflow, ChaosGuardianWorkflow],
                    activities=all_activities(settings, policy),
                ):
                    handle = await run(env, queue, redis)
                    report = await handle.result()
                    print(path.name, report.outcome, report.reason)
                    path.write_text((await handle.fetch_history()).to_json())
                    guardian = env.client.get_workflow_handle(f"{handle.id}-guardian")
                    with contextlib.suppress(Exception):  # none started, or ended
                        await guardian.terminate("recording over")
            finally:
                redis.stop()
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(record())
