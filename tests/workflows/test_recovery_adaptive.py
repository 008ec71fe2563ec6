"""The ADAPTIVE strategy on the time-skipping server: learned attempt times, fallbacks.

The ledger read (``read_learned_recoveries``) is scripted under its real name, so each test
decides what the ledger holds or that it cannot be read; the probe is scripted as in
``test_recovery.py``. The real activity against a real ledger runs in the bench and demo.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.common import CommonActivities
from antifragile.constants import ACTIVITY_READ_LEARNED_RECOVERIES
from antifragile.models.recovery import (
    LearnedRecoveries,
    LearnedRecoveriesInput,
    RecoveryPolicy,
    RecoveryRequest,
    RecoveryResult,
    RecoveryState,
    RecoveryStrategy,
)
from antifragile.policy import WorkerPolicy
from antifragile.recovery.client import start_recovery
from antifragile.settings import Settings
from tests.helpers import time_skipping_server
from tests.workflows.test_recovery import ScriptedService
from workers.main import workflow_runner
from workflows.recovery import RecoveryWorkflow


class Ledger:
    """A scripted ``read_learned_recoveries``: fixed times, or unreadable."""

    def __init__(self, recover_s: list[float] | None) -> None:
        self.recover_s = recover_s
        self.reads = 0

    @activity.defn(name=ACTIVITY_READ_LEARNED_RECOVERIES)
    async def read(self, data: LearnedRecoveriesInput) -> LearnedRecoveries:
        self.reads += 1
        if self.recover_s is None:
            raise ApplicationError("ledger unreachable", non_retryable=True)
        return LearnedRecoveries(
            dependency=data.dependency,
            recover_us=[int(v * 1_000_000) for v in self.recover_s],
            found=True,
        )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    async with time_skipping_server() as environment:
        yield environment


async def run(
    env: WorkflowEnvironment, service: ScriptedService, ledger: Ledger, strategy: RecoveryStrategy
) -> tuple[RecoveryResult, list[str], list[str]]:
    """Run one recovery; (result, activity types scheduled, timer summaries)."""
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    common = CommonActivities(Settings(), WorkerPolicy())
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[RecoveryWorkflow],
        workflow_runner=workflow_runner(strict=True),
        activities=[
            common.validate_constitutional_hash,
            service.probe_service,
            service.run_recovery_action,
            ledger.read,
        ],
    ):
        req = RecoveryRequest(
            service=f"svc-{uuid.uuid4().hex[:6]}",
            probe="tcp://127.0.0.1:9",
            strategy=strategy,
            policy=RecoveryPolicy(initial_delay_ms=1000, max_delay_ms=60_000),
        )
        handle = await start_recovery(env.client, req, task_queue=queue)
        result = await handle.result()
        history = await handle.fetch_history()
    activities, timers = [], []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            activities.append(event.activity_task_scheduled_event_attributes.activity_type.name)
        if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            summary = event.user_metadata.summary.data.decode() if event.user_metadata else ""
            timers.append(summary)
    return result, activities, timers


def gaps(result: RecoveryResult) -> list[float]:
    starts = [a.started_at for a in result.status.attempts]
    return [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]


async def test_adaptive_probes_at_the_learned_times(env: WorkflowEnvironment) -> None:
    ledger = Ledger([1, 2, 30, 2, 1, 30])
    service = ScriptedService(healthy_on_attempt=3)
    result, activities, timers = await run(env, service, ledger, RecoveryStrategy.ADAPTIVE)
    assert result.state is RecoveryState.SUCCEEDED
    assert ledger.reads == 1
    assert activities.count(ACTIVITY_READ_LEARNED_RECOVERIES) == 1
    # attempts at ~0, 2 s and 30 s after the start (the learned plan), not 1 s and 2 s later
    g = gaps(result)
    assert 1.5 <= g[0] <= 2.5, g
    assert 27 <= g[1] <= 29, g
    assert all("adaptive: 6 verified recoveries learned" in t for t in timers), timers


async def test_adaptive_falls_back_when_the_ledger_is_unreadable(env: WorkflowEnvironment) -> None:
    ledger = Ledger(None)
    service = ScriptedService(healthy_on_attempt=3)
    result, _, timers = await run(env, service, ledger, RecoveryStrategy.ADAPTIVE)
    assert result.state is RecoveryState.SUCCEEDED
    assert [round(x) for x in gaps(result)] == [1, 2]  # exponential backoff
    assert timers and all("fell back to exponential backoff" in t for t in timers), timers


async def test_adaptive_falls_back_with_too_few_observations(env: WorkflowEnvironment) -> None:
    ledger = Ledger([5, 6])
    service = ScriptedService(healthy_on_attempt=2)
    result, _, timers = await run(env, service, ledger, RecoveryStrategy.ADAPTIVE)
    assert result.state is RecoveryState.SUCCEEDED
    assert [round(x) for x in gaps(result)] == [1]
    assert "2 verified recoveries" in timers[0] and "fell back" in timers[0]


async def test_other_strategies_never_read_the_ledger(env: WorkflowEnvironment) -> None:
    ledger = Ledger([1, 2, 3])
    service = ScriptedService(healthy_on_attempt=2)
    _, activities, timers = await run(env, service, ledger, RecoveryStrategy.EXPONENTIAL_BACKOFF)
    assert ACTIVITY_READ_LEARNED_RECOVERIES not in activities
    assert ledger.reads == 0
    assert [t.strip('"') for t in timers] == ["backoff 1000 ms before attempt 2"]


async def test_a_first_probe_that_passes_never_reads_the_ledger(env: WorkflowEnvironment) -> None:
    """The plan is read after a round's first failure: a recovery whose first probe
    passes never waits for the ledger (a slow ledger can never delay the first probe)."""
    ledger = Ledger([1, 2, 3])
    service = ScriptedService(healthy_on_attempt=1)
    result, activities, _ = await run(env, service, ledger, RecoveryStrategy.ADAPTIVE)
    assert result.state is RecoveryState.SUCCEEDED
    assert ledger.reads == 0 and ACTIVITY_READ_LEARNED_RECOVERIES not in activities


async def test_the_ledger_is_read_after_the_first_probe(env: WorkflowEnvironment) -> None:
    ledger = Ledger([1, 2, 30, 2, 1, 30])
    service = ScriptedService(healthy_on_attempt=2)
    _, activities, _ = await run(env, service, ledger, RecoveryStrategy.ADAPTIVE)
    read = activities.index(ACTIVITY_READ_LEARNED_RECOVERIES)
    assert activities.index("probe_service") < read
