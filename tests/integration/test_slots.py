"""Slots follow work, not waiting: the scenario of issue 10's "done when", on a dev server.

Policy ``max_concurrent: 2``. Two services that depend on a dead one are recovered through
the CLI (``--strategy immediate --max-attempts 3``): each makes its three attempts, escalates
and waits for a person, and gives its slot back. Ten recoveries of live services then
arrive together (one batch, as a bridge in a storm sends them) with shuffled priorities:
all succeed within a minute, admitted in priority order, never more than two running, while
the two escalated ones still wait for approval and hold no slot.

The retry budget is left at its default (10% of at least 10 attempts over 5 minutes): six
of the first ten attempts fail by design, so after four of the live ones succeed the
budget pauses new admissions. The pause bounds retries without stalling the queue: it
admits one recovery at a time (a probe admission), so the rest still recover within the
minute, in priority order, and the pause still holds at the end (6 of 16 failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.service import RPCError

import antifragile.testing as af_testing
from antifragile.constants import (
    INTAKE_SHARDS,
    QUERY_STATUS,
    intake_workflow_id,
    orchestrator_workflow_id,
    recovery_workflow_id,
)
from antifragile.models.orchestrator import QueueView
from antifragile.models.recovery import RecoveryRequest, RecoveryState, RecoveryStatus
from antifragile.orchestrator.client import orchestrator_queue, signal_orchestrator
from antifragile.orchestrator.explain import admission_order_violations
from antifragile.policy import RecoveryPolicyConfig, WorkerPolicy
from antifragile.stack.processes import free_port

pytestmark = pytest.mark.integration


async def cli(port: int, task_queue: str, *args: str) -> tuple[int, str, str]:
    """``antifragile ARGS`` as an operator runs it, against the test's server and queue."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ANTIFRAGILE_")},
        "ANTIFRAGILE_TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
        "ANTIFRAGILE_TASK_QUEUE": task_queue,
        "COLUMNS": "200",
    }
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "antifragile"),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def until(
    client: Client,
    task_queue: str,
    check: Any,
    timeout: float,
    peaks: list[int],
    probes: list[int] | None = None,
) -> QueueView:
    """Poll the queue until ``check(view)``; record the running count (and the number of
    probe admissions running) seen each time."""

    async def met() -> QueueView:
        view = await orchestrator_queue(client, task_queue=task_queue)
        peaks.append(len(view.running))
        if probes is not None and view.paused:
            probes.append(sum(r.probe for r in view.running))
        assert check(view), view.model_dump_json()[:3000]
        return view

    view: QueueView = await af_testing.eventually(
        met, timeout, 0.05, retry_on=(RPCError,), what="condition"
    )
    return view


async def test_escalated_recoveries_hold_no_slot_and_the_rest_of_the_fleet_recovers(
    dev_server: Any, temporal_client: Client, start_worker: Any, task_queue: str
) -> None:
    prefix = f"sl{uuid.uuid4().hex[:6]}"
    dead = [f"{prefix}-dead{i}" for i in (1, 2)]
    live = [f"{prefix}-live{i:02d}" for i in range(10)]
    priorities = list(range(10))
    random.Random(prefix).shuffle(priorities)
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    up = f"tcp://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    down = f"tcp://127.0.0.1:{free_port()}"
    policy = WorkerPolicy(recovery=RecoveryPolicyConfig(max_concurrent=2))
    assert policy.recovery.retry_budget == 0.1, "the default budget is what this scenario tests"
    peaks: list[int] = []
    probes: list[int] = []
    orchestrator_id = orchestrator_workflow_id(task_queue)
    run = (dev_server.port, task_queue)
    async with start_worker(temporal_client, task_queue, policy=policy):
        try:
            for service in dead:
                code, out, err = await cli(
                    *run,
                    "recovery",
                    "start",
                    service,
                    "--probe",
                    down,
                    "--strategy",
                    "immediate",
                    "--max-attempts",
                    "3",
                )
                assert code == 0, err
            view = await until(
                temporal_client,
                task_queue,
                lambda v: {a.service for a in v.awaiting_approval} == set(dead),
                timeout=60,
                peaks=peaks,
            )
            assert view.running == [], "waiting for a person holds no slot"
            for service in dead:
                code, out, err = await cli(*run, "recovery", "status", service, "--json")
                assert code == 0, err
                status = json.loads(out)
                assert status["state"] == RecoveryState.AWAITING_APPROVAL.value
                assert status["attempt"] == 3

            # Ten live services report together (one batch), priorities shuffled.
            started = asyncio.get_running_loop().time()
            await signal_orchestrator(
                temporal_client,
                [
                    RecoveryRequest(service=service, priority=priority, probe=up)
                    for service, priority in zip(live, priorities, strict=True)
                ],
                orchestrator_id=orchestrator_id,
                task_queue=task_queue,
            )
            view = await until(
                temporal_client,
                task_queue,
                lambda v: v.finished.get("succeeded", 0) >= len(live),
                timeout=60,
                peaks=peaks,
                probes=probes,
            )
            took = asyncio.get_running_loop().time() - started
            assert took < 60
            for service in live:
                status = await temporal_client.get_workflow_handle(
                    recovery_workflow_id(service)
                ).query(QUERY_STATUS, result_type=RecoveryStatus)
                assert status.state is RecoveryState.SUCCEEDED, status
            records = [r for r in view.recent_admissions if r.service in live]
            assert [r.service for r in records] == [
                s for _, s in sorted(zip(priorities, live, strict=True))
            ], "admitted in priority order"
            assert admission_order_violations(view.recent_admissions) == 0
            assert max(r.running for r in view.recent_admissions) <= 2
            assert max(peaks) <= 2
            # The budget did pause (6 of 16 attempts failed) and it admitted one at a time.
            assert view.paused and view.budget is not None
            assert (view.budget.failed, view.budget.attempts) == (6, 16)
            assert "admitting one recovery at a time" in view.pause_reason
            assert max(probes, default=0) <= 1

            # The escalated ones still wait for a person, and hold no slot.
            code, out, err = await cli(*run, "recovery", "queue", "--json")
            assert code == 0, err
            shown = json.loads(out)
            assert {a["service"] for a in shown["awaiting_approval"]} == set(dead)
            assert shown["running"] == []
            code, out, err = await cli(*run, "recovery", "queue")
            assert code == 0, err
            assert "awaiting approval" in out and all(s in out for s in dead)
            assert "retry budget exceeded" in out, out
            for service in dead:
                status = await temporal_client.get_workflow_handle(
                    recovery_workflow_id(service)
                ).query(QUERY_STATUS, result_type=RecoveryStatus)
                assert status.state is RecoveryState.AWAITING_APPROVAL
        finally:
            ids = [
                *(recovery_workflow_id(s) for s in dead + live),
                orchestrator_id,
                *(intake_workflow_id(orchestrator_id, k) for k in range(INTAKE_SHARDS)),
            ]
            for workflow_id in ids:
                with contextlib.suppress(RPCError):
                    await temporal_client.get_workflow_handle(workflow_id).terminate("test over")
            listener.close()
