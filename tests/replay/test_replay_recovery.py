"""Replay a recorded RecoveryWorkflow history: a code change that breaks determinism fails here."""

from __future__ import annotations

from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workers.main import workflow_runner
from workflows.recovery import RecoveryWorkflow

HISTORY = Path(__file__).parent / "recovery_history.json"


async def test_recorded_recovery_history_replays_without_nondeterminism() -> None:
    history = WorkflowHistory.from_json("recovery-replay-fixture", HISTORY.read_text())
    replayer = Replayer(
        workflows=[RecoveryWorkflow],
        workflow_runner=workflow_runner(strict=True),
        data_converter=pydantic_data_converter,
    )
    result = await replayer.replay_workflow(history)
    assert result.replay_failure is None
