"""Replay every recorded orchestrator history: today's code must make the same decisions.

Fixtures are kept per released workflow version and never re-recorded: a change that
alters the commands an old history produced must use ``workflow.patched``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from antifragile.constants import ORCHESTRATOR_WORKFLOW_ID
from workers.main import workflow_runner
from workflows.recovery_orchestrator import RecoveryOrchestratorWorkflow

HERE = Path(__file__).parent
HISTORY = HERE / "orchestrator_history.json"
"""Recorded by ``python -m tests.replay.record_orchestrator_history``."""
SLOT_RELEASE = HERE / "orchestrator_history_v2_slot_release.json"
"""Recorded by ``python -m tests.replay.record_orchestrator_slots_history``."""
FIXTURES = sorted(HERE.glob("orchestrator_history*.json"))
TEXTS = {p.name: p.read_text() for p in FIXTURES}


def event_kinds(text: str) -> set[str]:
    return {e["eventType"].removeprefix("EVENT_TYPE_") for e in json.loads(text)["events"]}


def signal_names(text: str) -> set[str]:
    return {
        e["workflowExecutionSignaledEventAttributes"]["signalName"]
        for e in json.loads(text)["events"]
        if "workflowExecutionSignaledEventAttributes" in e
    }


@pytest.mark.parametrize("name", sorted(TEXTS))
async def test_every_recorded_orchestrator_history_replays_without_nondeterminism(
    name: str,
) -> None:
    text = TEXTS[name]
    history = WorkflowHistory.from_json(ORCHESTRATOR_WORKFLOW_ID, text)
    replayer = Replayer(
        workflows=[RecoveryOrchestratorWorkflow],
        workflow_runner=workflow_runner(strict=True),
        data_converter=pydantic_data_converter,
    )
    await replayer.replay_workflow(history)


def test_the_fixtures_cover_what_they_were_recorded_for() -> None:
    assert {HISTORY, SLOT_RELEASE} <= set(FIXTURES)
    # Admissions, every kind of child close and updates.
    assert {
        "START_CHILD_WORKFLOW_EXECUTION_INITIATED",
        "CHILD_WORKFLOW_EXECUTION_COMPLETED",
        "CHILD_WORKFLOW_EXECUTION_TERMINATED",
        "WORKFLOW_EXECUTION_UPDATE_COMPLETED",
    } <= event_kinds(HISTORY.read_text())
    # The slot-release path: a recovery waiting for a person, resumed, granted a slot by
    # a signal; attempts counted by the retry budget (behind its patch marker).
    text = SLOT_RELEASE.read_text()
    assert {"recovery_waiting", "recovery_resuming", "attempt_finished"} <= signal_names(text)
    assert {"SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED", "MARKER_RECORDED"} <= event_kinds(text)
    assert "slot_granted" in text
