"""Replay the recorded ledger history: today's code must make the same decisions."""

from __future__ import annotations

import json
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from antifragile.constants import profile_workflow_id
from tests.replay.record_profile_history import SERVICE
from workers.main import workflow_runner
from workflows.dependency_profile import DependencyProfileWorkflow

HISTORY = Path(__file__).with_name("profile_history.json")
"""Recorded by ``python -m tests.replay.record_profile_history``."""


async def test_the_recorded_ledger_history_replays_without_nondeterminism() -> None:
    text = HISTORY.read_text()
    kinds = [e["eventType"].removeprefix("EVENT_TYPE_") for e in json.loads(text)["events"]]
    # Three batches (the last from a recovery's recording activity), then continue-as-new.
    assert kinds.count("WORKFLOW_EXECUTION_SIGNALED") == 3
    assert "UPSERT_WORKFLOW_SEARCH_ATTRIBUTES" in kinds  # started without them
    assert kinds[-1] == "WORKFLOW_EXECUTION_CONTINUED_AS_NEW"
    history = WorkflowHistory.from_json(profile_workflow_id(SERVICE), text)
    replayer = Replayer(
        workflows=[DependencyProfileWorkflow],
        workflow_runner=workflow_runner(strict=True),
        data_converter=pydantic_data_converter,
    )
    await replayer.replay_workflow(history)


def test_the_recovery_fixture_records_its_outage_behind_the_patch() -> None:
    """``recovery_history_v3_learning.json`` (replayed by test_replay_recovery.py) holds the
    patch marker and the recording activity, so the patched path stays replayable."""
    from tests.replay.test_replay_recovery import _patches
    from workflows._learning_feed import LEARNING_OBSERVATIONS

    fixture = HISTORY.with_name("recovery_history_v3_learning.json")
    assert LEARNING_OBSERVATIONS in _patches(fixture)
    events = json.loads(fixture.read_text())["events"]
    scheduled = [
        e["activityTaskScheduledEventAttributes"]["activityType"]["name"]
        for e in events
        if e["eventType"] == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"
    ]
    assert scheduled[-1] == "record_dependency_observations"


async def test_the_recorded_change_history_replays() -> None:
    """``profile_history_v2_changes.json``: auto (behind its patch), refused, apply, revert."""
    from antifragile.constants import PATCH_PROFILE_AUTO_ADAPT
    from tests.replay.record_profile_history_v2 import OUT
    from tests.replay.record_profile_history_v2 import SERVICE as CHANGED
    from tests.replay.test_replay_recovery import _patches

    assert PATCH_PROFILE_AUTO_ADAPT in _patches(OUT)
    events = json.loads(OUT.read_text())["events"]
    scheduled = [
        e["activityTaskScheduledEventAttributes"]["activityType"]["name"]
        for e in events
        if e["eventType"] == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"
    ]
    assert scheduled.count("publish_dependency_config") == 2  # auto, then the revert
    assert scheduled.count("authorize_approver") == 3
    history = WorkflowHistory.from_json(profile_workflow_id(CHANGED), OUT.read_text())
    replayer = Replayer(
        workflows=[DependencyProfileWorkflow],
        workflow_runner=workflow_runner(strict=True),
        data_converter=pydantic_data_converter,
    )
    await replayer.replay_workflow(history)
