"""Recoveries under real faults: a worker SIGKILLed during a backoff, the Temporal server
restarted on its database while recoveries and a chaos experiment run, malformed signals."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter

from antifragile.chaos.client import start_experiment
from antifragile.constants import PROFILE_WORKFLOW_ID_PREFIX, recovery_workflow_id
from antifragile.models.chaos import ChaosOutcome, ChaosPhase, ChaosReport, ChaosStatus
from antifragile.models.chaos_scenario import ChaosScenario, ChaosType
from antifragile.models.recovery import (
    RecoveryPolicy,
    RecoveryRequest,
    RecoveryResult,
    RecoveryState,
    RecoveryStatus,
    RecoveryStrategy,
)
from antifragile.recovery.client import start_recovery
from antifragile.stack.processes import ServerProcess, free_port, start_temporal_dev_server
from tests.helpers import (
    Listener,
    WorkerProcess,
    stack_env,
    temporal_signal,
    wait_for,
    workflow_task_failures,
)
from tests.integration.chaos_support import Demo, eventually

pytestmark = pytest.mark.integration


async def test_a_worker_killed_during_backoff_resumes_the_same_recovery_without_repeating_attempts(
    temporal_client: Client,
    dev_server: ServerProcess,
    redis_url: str,
    task_queue: str,
    worker_process: Callable[[dict[str, str]], WorkerProcess],
    tmp_path: Path,
) -> None:
    listener = Listener()
    ledger = tmp_path / "actions.log"
    policy = tmp_path / "policy.yaml"
    # The action appends one line per run: the ledger proves no attempt ran twice.
    policy.write_text(
        json.dumps(
            {
                "recovery": {
                    "commands": {
                        "note": [
                            sys.executable,
                            "-c",
                            f"import os; open({str(ledger)!r}, 'a')"
                            ".write(os.environ['AF_ATTEMPT'] + '\\n')",
                        ]
                    }
                }
            }
        )
    )
    env = stack_env(dev_server, redis_url, task_queue, ANTIFRAGILE_POLICY_FILE=str(policy))
    service = f"cache-{task_queue}"
    request = RecoveryRequest(
        service=service,
        probe=f"tcp://127.0.0.1:{listener.port}",
        action="command:note",
        policy=RecoveryPolicy(initial_delay_ms=4000, max_delay_ms=4000),
    )
    worker = worker_process(env)
    handle = await start_recovery(temporal_client, request, task_queue=task_queue)

    async def backing_off() -> bool:
        s = await temporal_client.get_workflow_handle(recovery_workflow_id(service)).query(
            "status", result_type=RecoveryStatus
        )
        return s.state is RecoveryState.WAITING_BACKOFF

    await wait_for(backing_off)
    worker.kill()
    await listener.open()
    try:
        worker_process(env)
        result = await asyncio.wait_for(handle.result(), 60)
    finally:
        await listener.close()
    assert result.state is RecoveryState.SUCCEEDED
    assert [a.number for a in result.status.attempts] == [1, 2]
    assert ledger.read_text().split() == ["1", "2"]


async def test_recoveries_and_an_experiment_finish_after_the_temporal_server_restarts_on_its_db(
    tmp_path: Path,
    redis_url: str,
    worker_process: Callable[[dict[str, str]], WorkerProcess],
    task_queue: str,
) -> None:
    port = free_port()
    db = tmp_path / "temporal.db"
    server = start_temporal_dev_server(port, db_file=db, log_path=tmp_path / "t.log")
    listener = Listener()
    target = f"rdb-{task_queue}"
    policy = tmp_path / "policy.yaml"
    # The lease must outlive the worst renewal delay: a third of the TTL, plus the outage,
    # plus the 10 s workflow task timeout (a task in flight when the server stops is
    # only retried after it; seen here). Then the fault survives the outage (Redis holds
    # it, not Temporal) and the renewal after the restart still finds it.
    policy.write_text(
        f"chaos:\n  allowed_targets: [{target}]\n  max_duration_s: 60\n  lease_ttl_s: 30\n"
    )
    env = stack_env(
        server,
        redis_url,
        task_queue,
        ANTIFRAGILE_POLICY_FILE=str(policy),
        ANTIFRAGILE_LOG_LEVEL="WARNING",
    )
    demo = Demo(env, tmp_path, [target], f"restart-{task_queue}")
    try:
        worker_process(env)
        demo.start()
        client = await Client.connect(f"127.0.0.1:{port}", data_converter=pydantic_data_converter)
        services = [f"svc{i}-{task_queue}" for i in range(3)]
        for name in services:
            await start_recovery(
                client,
                RecoveryRequest(
                    service=name,
                    probe=f"tcp://127.0.0.1:{listener.port}",
                    policy=RecoveryPolicy(initial_delay_ms=3000, max_delay_ms=3000),
                ),
                task_queue=task_queue,
            )
        await eventually(lambda: demo.status()["plane_connected"], 30, "demo service up")
        scenario = ChaosScenario(
            name=f"restart-{task_queue}",
            chaos_type=ChaosType.LATENCY,
            target=target,
            latency_ms=20,
            duration_s=12,
            abort_below_health=0.0,  # this test watches the fault, not the health guard
            recovery_timeout_s=5,
        )
        experiment = await start_experiment(client, scenario, task_queue=task_queue)

        async def all_backing_off() -> bool:
            states = [
                (
                    await client.get_workflow_handle(recovery_workflow_id(n)).query(
                        "status", result_type=RecoveryStatus
                    )
                ).state
                for n in services
            ]
            return all(s is RecoveryState.WAITING_BACKOFF for s in states)

        async def running() -> bool:
            status = await experiment.query("status", result_type=ChaosStatus)
            return status.phase is ChaosPhase.RUNNING

        await wait_for(all_backing_off)
        await wait_for(running)
        await eventually(lambda: demo.target(target)["fault"] == experiment.id, 10, "fault")
        server.stop()
        # Temporal is down: the fault stays in force at the call site (its lease is in
        # Redis, renewed by the workflow every 10 s).
        await asyncio.sleep(2)
        assert demo.target(target)["fault"] == experiment.id
        server = start_temporal_dev_server(port, db_file=db, log_path=tmp_path / "t2.log")
        await listener.open()
        client = await Client.connect(f"127.0.0.1:{port}", data_converter=pydantic_data_converter)
        for name in services:
            handle = client.get_workflow_handle(
                recovery_workflow_id(name), result_type=RecoveryResult
            )
            result = await asyncio.wait_for(handle.result(), 90)
            assert result.state is RecoveryState.SUCCEEDED
            assert [a.outcome for a in result.status.attempts][-1] == "healthy"
            numbers = [a.number for a in result.status.attempts]
            assert numbers == list(range(1, len(numbers) + 1)), "no attempt lost or repeated"
            assert await workflow_task_failures(handle) == 0

        chaos = client.get_workflow_handle(experiment.id, result_type=ChaosReport)
        report = await asyncio.wait_for(chaos.result(), 90)
        assert report.outcome is ChaosOutcome.COMPLETED, report.reason
        assert [p.phase for p in report.phases] == [
            ChaosPhase.VALIDATING,
            ChaosPhase.STEADY_STATE_BEFORE,
            ChaosPhase.INJECTING,
            ChaosPhase.RUNNING,
            ChaosPhase.CLEANING_UP,
            ChaosPhase.VERIFYING_RECOVERY,
            ChaosPhase.COMPLETED,
        ]
        assert all(p.left_at is not None for p in report.phases[:-1])
        assert report.cleanup.attempted and report.cleanup.method == "removed"
        assert report.injected_at is not None and report.removed_at is not None
        # The fault ran for its whole duration across the restart: it was not cut short.
        assert (report.removed_at - report.injected_at).total_seconds() >= scenario.duration_s
        assert report.calls_affected.get(demo.instance, 0) > 0, report.calls_affected
        assert report.calls_seen[demo.instance] >= report.calls_affected[demo.instance]
        assert await workflow_task_failures(chaos) == 0
        await eventually(lambda: demo.target(target)["fault"] is None, 5, "fault gone")
        guardian = client.get_workflow_handle(f"{experiment.id}-guardian")
        await asyncio.wait_for(guardian.result(), 30)

        # Nothing else ran on the queue, and nothing is left running or failed. The services'
        # ledgers (profile-{service}, fed when a recovery or experiment ends) live on by
        # design, like the orchestrator: they are not part of this count.
        expected = {recovery_workflow_id(n) for n in services} | {experiment.id, guardian.id}

        async def nothing_running_or_failed() -> bool:
            found = {
                wf.id: wf.status
                async for wf in client.list_workflows(f'TaskQueue="{task_queue}"')
                if not wf.id.startswith(PROFILE_WORKFLOW_ID_PREFIX)
            }
            return set(found) == expected and all(
                s is WorkflowExecutionStatus.COMPLETED for s in found.values()
            )

        await wait_for(nothing_running_or_failed)
    finally:
        demo.stop()
        await listener.close()
        server.stop()


async def test_malformed_signals_sent_with_the_temporal_cli_change_nothing(
    temporal_client: Client, dev_server: ServerProcess, start_worker, task_queue: str
) -> None:
    listener = Listener()
    await listener.open()
    service = f"mal-{task_queue}"
    async with start_worker(temporal_client, task_queue):
        handle = await start_recovery(
            temporal_client,
            RecoveryRequest(
                service=service,
                probe=f"tcp://127.0.0.1:{listener.port}",
                strategy=RecoveryStrategy.MANUAL,
            ),
            task_queue=task_queue,
        )

        async def awaiting() -> bool:
            s = await handle.query("status", result_type=RecoveryStatus)
            return s.state is RecoveryState.AWAITING_APPROVAL

        await wait_for(awaiting)
        for name, payload in [
            ("approve", '{"approver": ""}'),
            ("approve", '{"who": "x"}'),
            ("approve", '"just a string"'),
            ("reject", "[1, 2, 3]"),
            ("health_changed", '{"healthy": "maybe"}'),
            ("join", '{"priority": -5}'),
        ]:
            assert (
                await temporal_signal(f"127.0.0.1:{dev_server.port}", handle.id, name, payload)
            )[0] == 0
        await asyncio.sleep(1)
        status = await handle.query("status", result_type=RecoveryStatus)
        assert status.state is RecoveryState.AWAITING_APPROVAL
        assert status.decisions == [] and status.priority == 1
        desc = await handle.describe()
        assert desc.status is not None and desc.status.name == "RUNNING"
        # ... and the workflow still takes a well-formed decision.
        good = json.dumps({"approver": "alice"})
        assert (await temporal_signal(f"127.0.0.1:{dev_server.port}", handle.id, "approve", good))[
            0
        ] == 0
        result = await asyncio.wait_for(handle.result(), 30)
    await listener.close()
    assert result.state is RecoveryState.SUCCEEDED
