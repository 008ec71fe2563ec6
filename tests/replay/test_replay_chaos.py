"""Replay a recorded ChaosExperimentWorkflow history: any non-deterministic change to the
workflow code fails here before it can break experiments running in production."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.replay.record_chaos_history import (
    GUARDIAN_HISTORY,
    GUARDIAN_ID,
    HISTORY,
    WORKFLOW_ID,
)
from tests.replay.record_chaos_history_learning import FIXTURES as FIXTURES_LEARNING
from tests.replay.record_chaos_history_v2 import FIXTURES
from tests.replay.record_chaos_history_v3 import FIXTURES as FIXTURES_V3
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


EXPERIMENT_IDS = {
    Path(HISTORY).name: WORKFLOW_ID,
    **FIXTURES,
    **FIXTURES_V3,
    **FIXTURES_LEARNING,
}
"""Every stored experiment fixture and the workflow id it was recorded under."""


def test_every_stored_experiment_fixture_is_replayed() -> None:
    stored = {p.name for p in Path(HISTORY).parent.glob("chaos_history*.json")}
    assert stored == set(EXPERIMENT_IDS)


@pytest.mark.parametrize("name", sorted(EXPERIMENT_IDS))
async def test_every_recorded_experiment_history_replays(name: str) -> None:
    text = (Path(HISTORY).parent / name).read_text()
    history = WorkflowHistory.from_json(EXPERIMENT_IDS[name], text)
    replayer = Replayer(
        workflows=[ChaosExperimentWorkflow, ChaosGuardianWorkflow],
        workflow_runner=workflow_runner(strict=True),
        data_converter=pydantic_data_converter,
    )
    await replayer.replay_workflow(history)


def _patches(name: str, workflow_id: str) -> set[str]:
    history = WorkflowHistory.from_json(workflow_id, (Path(HISTORY).parent / name).read_text())
    found: set[str] = set()
    for e in history.events:
        if e.HasField("marker_recorded_event_attributes"):
            for payloads in e.marker_recorded_event_attributes.details.values():
                found.update(p.data.decode(errors="replace") for p in payloads.payloads)
    return found


@pytest.mark.parametrize("name", sorted(EXPERIMENT_IDS))
def test_only_the_v3_fixtures_carry_the_cancel_in_activity_patch(name: str) -> None:
    """The v3 fixtures were recorded on the patched path (their replay checks the new
    branch); the older ones have no marker (their replay checks the old branch)."""
    patched = any("chaos-cancel-in-activity" in p for p in _patches(name, EXPERIMENT_IDS[name]))
    assert patched is (name in FIXTURES_V3)


@pytest.mark.parametrize("name", sorted(EXPERIMENT_IDS))
def test_only_the_learning_fixture_records_its_observation_behind_the_patch(name: str) -> None:
    """The learning fixture checks the patched ending (the recording activity is in its
    history); every older one checks that an ending without the marker issues nothing."""
    patched = any("learning-observations" in p for p in _patches(name, EXPERIMENT_IDS[name]))
    assert patched is (name in FIXTURES_LEARNING)
    text = (Path(HISTORY).parent / name).read_text()
    assert ("record_dependency_observations" in text) is patched
