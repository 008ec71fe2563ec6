"""Replay a recorded intake history: today's code must make the same decisions."""

from __future__ import annotations

import json
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from antifragile.constants import intake_workflow_id, orchestrator_workflow_id
from tests.replay.record_intake_history import QUEUE
from workers.main import workflow_runner
from workflows.recovery_intake import RecoveryIntakeWorkflow

HISTORY = Path(__file__).with_name("intake_history.json")
"""Recorded by ``python -m tests.replay.record_intake_history``."""


async def test_the_recorded_intake_history_replays_without_nondeterminism() -> None:
    text = HISTORY.read_text()
    events = json.loads(text)["events"]
    kinds = [e["eventType"].removeprefix("EVENT_TYPE_") for e in events]
    # The recording covers bursts of signals, forwarding, and the idle end.
    assert kinds.count("WORKFLOW_EXECUTION_SIGNALED") >= 3
    assert kinds.count("ACTIVITY_TASK_COMPLETED") >= 2
    assert {"TIMER_FIRED", "WORKFLOW_EXECUTION_COMPLETED"} <= set(kinds)
    history = WorkflowHistory.from_json(
        intake_workflow_id(orchestrator_workflow_id(QUEUE), 0), text
    )
    replayer = Replayer(
        workflows=[RecoveryIntakeWorkflow],
        workflow_runner=workflow_runner(strict=True),
        data_converter=pydantic_data_converter,
    )
    await replayer.replay_workflow(history)
