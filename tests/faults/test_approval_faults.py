"""Approvals from names outside the policy's approvers, on a real server and worker process.

The worker subprocess reads a policy file that lists one approver. A decision from anyone
else is refused and recorded (in the workflow's status and its result), the workflow keeps
waiting, and a listed approver's decision then takes effect. Covered for both gated
workflows: a MANUAL recovery (through ``antifragile recovery approve``) and a chaos
experiment that requires approval (through ``temporal workflow signal``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from antifragile.chaos.client import start_experiment
from antifragile.constants import recovery_workflow_id
from antifragile.models.chaos import ChaosOutcome, ChaosPhase, ChaosReport, ChaosStatus
from antifragile.models.chaos_scenario import ChaosScenario, ChaosType
from antifragile.models.common import Decision
from antifragile.models.recovery import (
    RecoveryRequest,
    RecoveryResult,
    RecoveryState,
    RecoveryStatus,
    RecoveryStrategy,
)
from antifragile.recovery.client import start_recovery
from antifragile.stack.processes import ServerProcess
from tests.helpers import (
    Listener,
    WorkerProcess,
    run_cli,
    stack_env,
    temporal_signal,
    wait_for,
    workflow_task_failures,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


@pytest.fixture
def gated_env(
    tmp_path: Path,
    dev_server: ServerProcess,
    redis_url: str,
    task_queue: str,
    worker_process: Callable[[dict[str, str]], WorkerProcess],
) -> dict[str, str]:
    """A worker subprocess whose policy allows only ``alice`` to approve."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        json.dumps(
            {
                "recovery": {"approvers": ["alice"]},
                "chaos": {"allowed_targets": [f"gated-{task_queue}"]},
            }
        )
    )
    env = stack_env(
        dev_server,
        redis_url,
        task_queue,
        ANTIFRAGILE_POLICY_FILE=str(policy),
        ANTIFRAGILE_LOG_LEVEL="WARNING",
    )
    worker_process(env)
    return env


async def test_a_recovery_approval_by_a_non_approver_is_refused_recorded_and_changes_nothing(
    temporal_client: Client, gated_env: dict[str, str], task_queue: str
) -> None:
    listener = Listener()
    await listener.open()
    service = f"ledger-{task_queue}"
    handle = await start_recovery(
        temporal_client,
        RecoveryRequest(
            service=service,
            probe=f"tcp://127.0.0.1:{listener.port}",
            strategy=RecoveryStrategy.MANUAL,
        ),
        task_queue=task_queue,
    )

    async def status() -> RecoveryStatus:
        return await handle.query("status", result_type=RecoveryStatus)

    async def awaiting() -> bool:
        return (await status()).state is RecoveryState.AWAITING_APPROVAL

    try:
        await wait_for(awaiting, 60)
        before = await status()
        refused = await run_cli(gated_env, "recovery", "approve", service, "--by", "mallory")
        assert refused.code == 2, refused
        assert refused.stderr.strip().splitlines() == [
            "error: mallory was refused: 'mallory' is not an approver in the worker policy"
        ]
        # Recorded, and nothing else changed: still waiting for a real approver.
        now = await status()
        assert now.state is RecoveryState.AWAITING_APPROVAL
        assert [(d.approver, d.decision) for d in now.decisions] == [("mallory", Decision.REFUSED)]
        assert "not an approver" in now.decisions[0].reason
        assert now.attempts == before.attempts, "a refused approval runs no attempt"

        approved = await run_cli(gated_env, "recovery", "approve", service, "--by", "alice")
        assert approved.code == 0, approved
        assert "approved by alice" in approved.stdout
        done = temporal_client.get_workflow_handle(
            recovery_workflow_id(service), result_type=RecoveryResult
        )
        result = await asyncio.wait_for(done.result(), 60)
    finally:
        await listener.close()
    assert result.state is RecoveryState.SUCCEEDED
    assert [(d.approver, d.decision) for d in result.status.decisions] == [
        ("mallory", Decision.REFUSED),
        ("alice", Decision.APPROVED),
    ]
    assert await workflow_task_failures(done) == 0


async def _signal(env: dict[str, str], workflow_id: str, name: str, payload: str) -> None:
    code, err = await temporal_signal(
        env["ANTIFRAGILE_TEMPORAL_ADDRESS"], workflow_id, name, payload
    )
    assert code == 0, err


async def test_a_chaos_approval_by_a_non_approver_is_refused_recorded_and_injects_nothing(
    temporal_client: Client, gated_env: dict[str, str], task_queue: str
) -> None:
    scenario = ChaosScenario(
        name=f"gated-{task_queue}",
        chaos_type=ChaosType.LATENCY,
        target=f"gated-{task_queue}",
        duration_s=1,
        require_approval=True,
        dry_run=True,  # the approval gate is under test, not the fault
        abort_below_health=0.0,
    )
    handle = await start_experiment(temporal_client, scenario, task_queue=task_queue)

    async def status() -> ChaosStatus:
        return await handle.query("status", result_type=ChaosStatus)

    async def awaiting() -> bool:
        return (await status()).phase is ChaosPhase.AWAITING_APPROVAL

    await wait_for(awaiting, 60)
    await _signal(gated_env, handle.id, "approve", '{"approver": "mallory", "note": "trust me"}')

    async def refused() -> ChaosStatus | None:
        s = await status()
        return s if s.decisions else None

    now = await wait_for(refused, 30)
    assert isinstance(now, ChaosStatus)
    assert now.phase is ChaosPhase.AWAITING_APPROVAL and now.injected_at is None
    [record] = now.decisions
    assert (record.approver, record.decision, record.note) == (
        "mallory",
        Decision.REFUSED,
        "trust me",
    )
    assert "not an approver" in record.reason
    assert (await handle.describe()).status is WorkflowExecutionStatus.RUNNING

    await _signal(gated_env, handle.id, "approve", '{"approver": "alice"}')
    report: ChaosReport = await asyncio.wait_for(handle.result(), 60)
    assert report.outcome is ChaosOutcome.COMPLETED, report.reason
    assert [(d.approver, d.decision) for d in report.decisions] == [
        ("mallory", Decision.REFUSED),
        ("alice", Decision.APPROVED),
    ]
    assert await workflow_task_failures(handle) == 0
