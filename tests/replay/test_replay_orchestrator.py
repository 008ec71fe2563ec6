"""Replay a recorded orchestrator history: today's code must make the same decisions."""

from __future__ import annotations

import json
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from antifragile.constants import ORCHESTRATOR_WORKFLOW_ID
from workers.main import workflow_runner
from workflows.recovery_orchestrator import RecoveryOrchestratorWorkflow

HISTORY = Path(__file__).with_name("orchestrator_history.json")
"""Recorded by ``python -m tests.replay.record_orchestrator_history``."""


async def test_the_recorded_orchestrator_history_replays_without_nondeterminism() -> None:
    text = HISTORY.read_text()
    kinds = {e["eventType"].removeprefix("EVENT_TYPE_") for e in json.loads(text)["events"]}
    # The recording covers admissions, every kind of child close and updates.
    assert {
        "START_CHILD_WORKFLOW_EXECUTION_INITIATED",
        "CHILD_WORKFLOW_EXECUTION_COMPLETED",
        "CHILD_WORKFLOW_EXECUTION_TERMINATED",
        "WORKFLOW_EXECUTION_UPDATE_COMPLETED",
    } <= kinds
    history = WorkflowHistory.from_json(ORCHESTRATOR_WORKFLOW_ID, text)
    replayer = Replayer(
        workflows=[RecoveryOrchestratorWorkflow],
        workflow_runner=workflow_runner(strict=True),
        data_converter=pydantic_data_converter,
    )
    await replayer.replay_workflow(history)
