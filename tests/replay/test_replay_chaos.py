"""Replay a recorded ChaosExperimentWorkflow history: any non-deterministic change to the
workflow code fails here before it can break experiments running in production."""

from __future__ import annotations

from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.replay.record_chaos_history import (
    GUARDIAN_HISTORY,
    GUARDIAN_ID,
    HISTORY,
    WORKFLOW_ID,
)
from workers.main import workflow_runner
from workflows.chaos_experiment import ChaosExperimentWorkflow
from workflows.chaos_guardian import ChaosGuardianWorkflow

TEXT = Path(HISTORY).read_text()


async def test_recorded_chaos_history_replays() -> None:
    history = WorkflowHistory.from_json(WORKFLOW_ID, TEXT)
    event_types = {e.event_type for e in history.events}
    assert len(history.events) > 50 and len(event_types) > 8  # a rich run, not a stub
    replayer = Replayer(
        workflows=[ChaosExperimentWorkflow, ChaosGuardianWorkflow],
        workflow_runner=workflow_runner(strict=True),
        data_converter=pydantic_data_converter,
    )
    await replayer.replay_workflow(history)


GUARDIAN_TEXT = Path(GUARDIAN_HISTORY).read_text()


async def test_recorded_guardian_history_replays() -> None:
    history = WorkflowHistory.from_json(GUARDIAN_ID, GUARDIAN_TEXT)
    assert len(history.events) > 20  # checks, a stand_down signal, completion
    replayer = Replayer(
        workflows=[ChaosGuardianWorkflow],
        workflow_runner=workflow_runner(strict=True),
        data_converter=pydantic_data_converter,
    )
    await replayer.replay_workflow(history)
