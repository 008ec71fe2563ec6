"""RecoveryIntakeWorkflow on the time-skipping server, in front of a real orchestrator.

Fixtures and helpers come from the orchestrator's tests: each test runs its own
orchestrator id and task queue, with the intake workflow and its activity registered.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from antifragile.constants import (
    INTAKE_SHARDS,
    INTAKE_WORKFLOW_TYPE,
    QUERY_INTAKE,
    SIGNAL_REQUEST_RECOVERIES,
    intake_shard,
    intake_workflow_id,
)
from antifragile.models.orchestrator import EnqueueBatch, RequestState
from antifragile.models.recovery import RecoveryRequest
from antifragile.models.recovery_intake import IntakeInput, IntakeResult, IntakeStatus
from antifragile.orchestrator.client import request_recovery
from tests.helpers import client_of_its_own
from tests.workflows import test_recovery_orchestrator as orchestrator_tests
from tests.workflows.test_recovery_orchestrator import (
    SLOW,
    Orchestra,
    OrchestraFactory,
    signal_count,
)

# The orchestrator tests' fixtures: a time-skipping server of this module's own, and an
# orchestrator (with intakes) on a fresh queue per test.
env = orchestrator_tests.env
orchestra = orchestrator_tests.orchestra


def request_for(o: Orchestra, short: str, priority: int = 2) -> RecoveryRequest:
    o.requested.add(o.name(short))
    return RecoveryRequest(
        service=o.name(short), priority=priority, probe="tcp://127.0.0.1:9", policy=SLOW
    )


async def fire_and_forget(
    o: Orchestra, request: RecoveryRequest, client: Client | None = None
) -> Any:
    """``request_recovery`` as the bridge calls it (no position wanted)."""
    return await request_recovery(
        client or o.client,
        request,
        task_queue=o.queue,
        orchestrator_id=o.orchestrator_id,
        want_position=False,
    )


async def test_an_idle_intake_ends_and_the_next_request_starts_it_again(
    env: WorkflowEnvironment, orchestra: OrchestraFactory
) -> None:
    async with orchestra(max_concurrent=1) as o:
        await o.request("blocker", priority=0)
        await o.wait(lambda v: o.running(v) == ["blocker"])
        first = request_for(o, "first")
        await fire_and_forget(o, first)
        await o.wait(lambda v: o.waiting(v) == ["first"])
        intake = env.client.get_workflow_handle(
            intake_workflow_id(o.orchestrator_id, intake_shard(first.service)),
            result_type=IntakeResult,
        )
        await env.sleep(timedelta(seconds=61))
        assert (await intake.result()).forwarded == 1
        # The same shard again: a new run takes it.
        second = next(
            request_for(o, f"second{i}")
            for i in range(1000)
            if intake_shard(o.name(f"second{i}")) == intake_shard(first.service)
        )
        await fire_and_forget(o, second)
        view = await o.wait(lambda v: v.waiting_total == 2)
        assert o.waiting(view) == ["first", o.short(second.service)]
        assert (await intake.describe()).status == WorkflowExecutionStatus.RUNNING
        await o.heal("blocker")


async def test_an_intake_continues_as_new_carrying_what_it_holds(
    env: WorkflowEnvironment, orchestra: OrchestraFactory
) -> None:
    async with orchestra(max_concurrent=1) as o:
        await o.request("blocker", priority=0)
        await o.wait(lambda v: o.running(v) == ["blocker"])
        intake_id = intake_workflow_id(o.orchestrator_id, 0)
        first = await env.client.start_workflow(
            INTAKE_WORKFLOW_TYPE,
            IntakeInput(
                orchestrator_id=o.orchestrator_id, task_queue=o.queue, max_history_events=20
            ),
            id=intake_id,
            task_queue=o.queue,
        )
        shorts = [f"c{i:02d}" for i in range(60)]
        for short in shorts:  # one at a time: each signal a workflow task of its own
            await first.signal(
                SIGNAL_REQUEST_RECOVERIES, EnqueueBatch(requests=[request_for(o, short)])
            )
        view = await o.wait(lambda v: v.waiting_total == 60, timeout=60)
        assert o.waiting(view) == shorts  # forwarded in arrival order, across runs
        first_run = env.client.get_workflow_handle(intake_id, run_id=first.result_run_id)
        assert (await first_run.describe()).status == WorkflowExecutionStatus.CONTINUED_AS_NEW
        latest = env.client.get_workflow_handle(intake_id)
        status = await latest.query(QUERY_INTAKE, result_type=IntakeStatus)
        assert (status.forwarded, status.pending) == (60, 0)
        await o.heal("blocker")


# Last in this module: hundreds of concurrent signal-with-starts of the same intakes make
# the time-skipping test server answer some with "already started" (retried), and after
# that its env.sleep no longer returns; a real server has neither quirk.
async def test_a_storm_from_many_processes_reaches_the_orchestrator_as_a_few_signals(
    env: WorkflowEnvironment, orchestra: OrchestraFactory
) -> None:
    async with orchestra(max_concurrent=1) as o:
        await o.request("blocker", priority=0)
        await o.wait(lambda v: o.running(v) == ["blocker"])
        shorts = [f"p{i:03d}" for i in range(600)]
        results = await asyncio.gather(
            *(fire_and_forget(o, request_for(o, s), client_of_its_own(o.client)) for s in shorts)
        )
        assert {r.state for r in results} == {RequestState.ACCEPTED}
        view = await o.wait(lambda v: v.waiting_total == 600, timeout=60)
        assert view.running[0].service == o.name("blocker")
        # 600 processes, 600 signals to the intakes; the orchestrator got a few batches.
        history = await env.client.get_workflow_handle(o.orchestrator_id).fetch_history()
        assert signal_count(history) <= 4 * INTAKE_SHARDS
        received = 0
        for shard in range(INTAKE_SHARDS):
            handle = env.client.get_workflow_handle(intake_workflow_id(o.orchestrator_id, shard))
            received += signal_count(await handle.fetch_history())
            status = await handle.query(QUERY_INTAKE, result_type=IntakeStatus)
            assert status.pending == 0
        assert received == 600
        await o.heal("blocker")
