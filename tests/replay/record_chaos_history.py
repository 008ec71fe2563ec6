"""Record ``chaos_history.json``: one ChaosExperimentWorkflow run touching most code paths
(approval refused then given, health signals, renewals, emergency stop, cleanup, verify).

Run from the repository root after changing the workflow on purpose:
``python -m tests.replay.record_chaos_history``.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from antifragile.chaos.client import start_experiment
from antifragile.constants import SEARCH_ATTRIBUTES
from antifragile.models.chaos import ChaosPhase, ChaosStatus, EmergencyStopSignal
from antifragile.models.chaos_scenario import ChaosScenario
from antifragile.models.common import ApprovalSignal, HealthChangedSignal
from antifragile.policy import ChaosPolicyConfig, RecoveryPolicyConfig, WorkerPolicy
from antifragile.settings import Settings
from antifragile.stack import binaries
from antifragile.stack.processes import start_redis
from workers.main import all_activities
from workflows.chaos_experiment import ChaosExperimentWorkflow
from workflows.chaos_guardian import ChaosGuardianWorkflow

HISTORY = Path(__file__).with_name("chaos_history.json")
GUARDIAN_HISTORY = Path(__file__).with_name("chaos_guardian_history.json")
WORKFLOW_ID = "chaos-replay-0a1b2c3d"
GUARDIAN_ID = f"{WORKFLOW_ID}-guardian"


async def record() -> None:
    # Released histories are kept as recorded: new paths get new files (see
    # record_chaos_history_v2.py), never a re-recording of these.
    for kept in (HISTORY, GUARDIAN_HISTORY):
        if kept.exists():
            raise SystemExit(f"{kept.name} exists: record new paths as new fixture files")
    redis = start_redis()
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binaries.temporal_test_server(),
        data_converter=pydantic_data_converter,
    )
    try:
        await env.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=env.client.namespace,
                search_attributes={
                    n: IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{k.upper()}")
                    for n, k in SEARCH_ATTRIBUTES.items()
                },
            )
        )
        settings = Settings(redis_url=f"redis://127.0.0.1:{redis.port}/0")
        policy = WorkerPolicy(
            recovery=RecoveryPolicyConfig(approvers=["alice"]),
            chaos=ChaosPolicyConfig(lease_ttl_s=6, max_duration_s=120),
        )
        queue = f"record-{uuid.uuid4().hex[:6]}"
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[ChaosExperimentWorkflow, ChaosGuardianWorkflow],
            activities=all_activities(settings, policy),
        ):
            scenario = ChaosScenario(
                name="replay",
                chaos_type="LATENCY",
                target="replay-db",
                blast_radius=["replay-cache"],
                latency_ms=200,
                duration_s=200,
                require_approval=True,
            )
            handle = await start_experiment(
                env.client, scenario, task_queue=queue, experiment_id=WORKFLOW_ID
            )
            await _wait(handle, ChaosPhase.AWAITING_APPROVAL)
            await handle.signal("approve", ApprovalSignal(approver="mallory"))
            await handle.signal("approve", ApprovalSignal(approver="alice", note="go"))
            await _wait(handle, ChaosPhase.RUNNING)
            await handle.signal(
                "health_changed",
                HealthChangedSignal(service="replay-db", healthy=True, score=0.9, source="a"),
            )
            await env.sleep(20)  # renewals and health checks happen meanwhile
            await handle.signal("emergency_stop", EmergencyStopSignal(reason="drill", by="rec"))
            report = await handle.result()
            print(report.outcome, [p.phase.value for p in report.phases])
            HISTORY.write_text((await handle.fetch_history()).to_json())
            guardian = env.client.get_workflow_handle(GUARDIAN_ID)
            for _ in range(200):  # result() long-polls badly on the test server: poll
                if (await guardian.describe()).close_time is not None:
                    break
                await asyncio.sleep(0.05)
            GUARDIAN_HISTORY.write_text((await guardian.fetch_history()).to_json())
            print(f"wrote {HISTORY} ({handle.id})")
    finally:
        await env.shutdown()
        redis.stop()


async def _wait(handle: object, phase: ChaosPhase) -> None:
    for _ in range(200):
        status = await handle.query("status", result_type=ChaosStatus)  # type: ignore[attr-defined]
        if status.phase is phase:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never reached {phase}")


if __name__ == "__main__":
    asyncio.run(record())
