"""Record the RecoveryWorkflow v2 fixtures: ``python -m tests.replay.record_recovery_v2``.

One history per new path of patch ``recovery-v2``, each in its own NEW file. An existing
fixture is never re-recorded or overwritten: histories of released versions are kept as
they were, so the replay test proves new code still replays them. To record a path again
after a deliberate, patched change, add a new file name here.

- ``recovery_history_v2_slot_release.json``: an orchestrated recovery escalates, tells its
  orchestrator it waits (slot released), is approved, asks for a slot again, is granted
  one and succeeds; ``attempt_finished`` after each attempt.
- ``recovery_history_v2_wake_during_attempt.json``: ``health_changed`` lands while attempt
  1's probe runs and cuts the hour-long backoff short; the recovery escalates, and a
  wake-up while awaiting approval runs a watch probe: recovered while awaiting approval.
- ``recovery_history_v2_crash_during_action.json``: the action's worker dies on its first
  try (heartbeat timeout); the retry inside the same attempt completes.
- ``recovery_history_v2_signed_approval.json``: an unsigned approval by a keyed approver
  is refused and recorded, a signed one is accepted.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.common import CommonActivities
from antifragile.hashing import sign_decision
from antifragile.models.common import ApprovalSignal, HealthChangedSignal
from antifragile.models.recovery import (
    ProbeInput,
    ProbeResult,
    RecoveryPolicy,
    RecoveryRequest,
    RecoveryState,
    RecoveryStatus,
    RecoveryStrategy,
)
from antifragile.policy import RecoveryPolicyConfig, WorkerPolicy
from antifragile.recovery.client import start_recovery
from antifragile.settings import Settings
from tests.workflows.recovery_parent import RecoveryParent
from tests.workflows.test_recovery import CrashingAction, ScriptedService, WakeDuring
from workflows.recovery import RecoveryWorkflow

HERE = Path(__file__).parent
KEY_ENV = "AF_REPLAY_FIXTURE_KEY"
KEY = "replay-fixture-key-of-32-bytes!!"
HOUR = RecoveryPolicy(max_retry_attempts=2, initial_delay_ms=3_600_000, max_delay_ms=3_600_000)


async def _wait(handle: WorkflowHandle[Any, Any], state: RecoveryState, attempt: int = 0) -> None:
    for _ in range(600):
        try:
            status = await handle.query("status", result_type=RecoveryStatus)
        except Exception:
            status = None
        if status is not None and status.state is state and status.attempt >= attempt:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"never reached {state}")


async def _with_worker(
    client: Client,
    service: ScriptedService,
    body: Callable[[str], Awaitable[WorkflowHandle[Any, Any]]],
    policy: WorkerPolicy | None = None,
) -> str:
    queue = f"replay-v2-{id(service)}"
    common = CommonActivities(Settings(), policy or WorkerPolicy())
    validate = getattr(service, "validate_constitutional_hash", None)
    async with Worker(
        client,
        task_queue=queue,
        workflows=[RecoveryWorkflow, RecoveryParent],
        activities=[
            validate or common.validate_constitutional_hash,
            common.authorize_approver,
            service.probe_service,
            service.run_recovery_action,
        ],
    ):
        handle = await body(queue)
        return (await handle.fetch_history()).to_json()


async def slot_release(client: Client) -> str:
    service = ScriptedService(healthy_on_attempt=None)

    async def body(queue: str) -> WorkflowHandle[Any, Any]:
        request = RecoveryRequest(
            service="replay-slots",
            probe="tcp://127.0.0.1:9",
            policy=RecoveryPolicy(max_retry_attempts=1),
            priority=2,
        )
        parent = await client.start_workflow(
            RecoveryParent.run, request, id="orchestrator-replay-slots", task_queue=queue
        )
        child = client.get_workflow_handle("recovery-replay-slots")
        await _wait(child, RecoveryState.AWAITING_APPROVAL)
        await child.signal("approve", ApprovalSignal(approver="oncall", note="go"))
        await _wait(child, RecoveryState.SCHEDULED)
        service.up = True
        await parent.signal(RecoveryParent.grant)
        await parent.result()
        return child

    return await _with_worker(client, service, body)


class WakeThenDown(WakeDuring):
    """``health_changed`` lands during probe 1; the service is down again for probe 2 and
    healthy from probe 3 (the watch probe while awaiting approval)."""

    @activity.defn(name="probe_service")
    async def probe_service(self, data: ProbeInput) -> ProbeResult:
        self.probes += 1
        await self._maybe_wake("probe")
        healthy = self.probes >= 3
        return ProbeResult(healthy=healthy, detail="ok" if healthy else "connection refused")


async def wake_during_attempt(client: Client) -> str:
    service = WakeThenDown(client, "probe", 1)

    async def body(queue: str) -> WorkflowHandle[Any, Any]:
        request = RecoveryRequest(service="replay-wake", probe="tcp://127.0.0.1:9", policy=HOUR)
        handle = await start_recovery(client, request, task_queue=queue)
        await _wait(handle, RecoveryState.AWAITING_APPROVAL, attempt=2)
        await handle.signal(
            "health_changed", HealthChangedSignal(service="replay-wake", healthy=True)
        )
        await handle.result()
        return handle

    return await _with_worker(client, service, body)


async def crash_during_action(client: Client) -> str:
    service = CrashingAction()

    async def body(queue: str) -> WorkflowHandle[Any, Any]:
        request = RecoveryRequest(service="replay-crash", probe="tcp://127.0.0.1:9")
        handle = await start_recovery(client, request, task_queue=queue)
        await handle.result()
        return handle

    return await _with_worker(client, service, body)


async def signed_approval(client: Client) -> str:
    os.environ[KEY_ENV] = KEY
    service = ScriptedService(healthy_on_attempt=None)
    policy = WorkerPolicy(recovery=RecoveryPolicyConfig(approvers={"alice": {"key_env": KEY_ENV}}))

    async def body(queue: str) -> WorkflowHandle[Any, Any]:
        request = RecoveryRequest(
            service="replay-signed",
            probe="tcp://127.0.0.1:9",
            strategy=RecoveryStrategy.MANUAL,
        )
        handle = await start_recovery(client, request, task_queue=queue)
        await _wait(handle, RecoveryState.AWAITING_APPROVAL)
        await handle.signal("approve", ApprovalSignal(approver="alice"))
        at = datetime.now(UTC)
        signature = sign_decision(
            KEY.encode(),
            workflow_id=handle.id,
            first_run_id=handle.result_run_id or "",
            decision="approved",
            approver="alice",
            signed_at=at,
        )
        service.up = True
        await handle.signal(
            "approve", ApprovalSignal(approver="alice", signature=signature, signed_at=at)
        )
        await handle.result()
        return handle

    return await _with_worker(client, service, body, policy)


FIXTURES: dict[str, Callable[[Client], Awaitable[str]]] = {
    "recovery_history_v2_slot_release.json": slot_release,
    "recovery_history_v2_wake_during_attempt.json": wake_during_attempt,
    "recovery_history_v2_crash_during_action.json": crash_during_action,
    "recovery_history_v2_signed_approval.json": signed_approval,
}


async def main() -> None:
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    from antifragile.stack import binaries
    from antifragile.temporal_client import ensure_search_attributes

    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binaries.temporal_test_server(),
        data_converter=pydantic_data_converter,
    )
    try:
        await ensure_search_attributes(env.client)
        for name, record in FIXTURES.items():
            path = HERE / name
            if path.exists():
                print(f"kept {name} (fixtures are never re-recorded)")
                continue
            path.write_text(await record(env.client))
            print(f"recorded {name}")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
