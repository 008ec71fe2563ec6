"""Regenerate ``recovery_history.json``: ``python -m tests.replay.record_recovery``.

Runs a recovery through escalation, a refused and an accepted approval, a health-driven
wake-up and success, so the recorded history exercises every branch the replay guards.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker

from activities.common import CommonActivities
from antifragile.models.common import ApprovalSignal, HealthChangedSignal
from antifragile.models.recovery import (
    RecoveryPolicy,
    RecoveryRequest,
    RecoveryState,
    RecoveryStatus,
)
from antifragile.policy import RecoveryPolicyConfig, WorkerPolicy
from antifragile.recovery.client import start_recovery
from antifragile.settings import Settings
from tests.workflows.test_recovery import ScriptedService
from workflows.recovery import RecoveryWorkflow

HERE = Path(__file__).parent
WORKFLOW_ID = "recovery-replay-fixture"


async def _wait(handle, state: RecoveryState) -> None:  # type: ignore[no-untyped-def]
    for _ in range(400):
        if (await handle.query("status", result_type=RecoveryStatus)).state is state:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"never reached {state}")


async def record(client: Client) -> str:
    service = ScriptedService(healthy_on_attempt=4)
    common = CommonActivities(
        Settings(), WorkerPolicy(recovery=RecoveryPolicyConfig(approvers=["alice"]))
    )
    async with Worker(
        client,
        task_queue="replay",
        workflows=[RecoveryWorkflow],
        activities=[
            common.validate_constitutional_hash,
            common.authorize_approver,
            service.probe_service,
            service.run_recovery_action,
        ],
    ):
        request = RecoveryRequest(
            service="replay-fixture",
            probe="tcp://127.0.0.1:9",
            policy=RecoveryPolicy(
                max_retry_attempts=2, initial_delay_ms=3_600_000, max_delay_ms=3_600_000
            ),
        )
        handle = await start_recovery(client, request, task_queue="replay")
        await _wait(handle, RecoveryState.WAITING_BACKOFF)
        await handle.signal(
            "health_changed", HealthChangedSignal(service="replay-fixture", healthy=True)
        )
        await _wait(handle, RecoveryState.AWAITING_APPROVAL)
        await handle.signal("approve", ApprovalSignal(approver="mallory"))
        await handle.signal("approve", ApprovalSignal(approver="alice", note="go"))
        await handle.result()
        history = await handle.fetch_history()
    return history.to_json()


async def main() -> None:
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    from antifragile.stack import binaries

    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binaries.temporal_test_server(),
        data_converter=pydantic_data_converter,
    )
    try:
        from antifragile.temporal_client import ensure_search_attributes

        await ensure_search_attributes(env.client)
        (HERE / "recovery_history.json").write_text(await record(env.client))
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
