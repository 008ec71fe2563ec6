"""Replay every recorded RecoveryWorkflow history: a code change that breaks determinism
for any released version fails here.

Fixtures are kept per released workflow version and never re-recorded
(``recovery_history.json`` predates patch ``recovery-v2``; ``recovery_history_v2_*.json``
record its new paths, see ``record_recovery_v2.py``). Every ``recovery_history*.json`` found
here is replayed, so a new fixture is covered by adding the file.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workers.main import workflow_runner
from workflows.recovery import PATCH_V2, RecoveryWorkflow

HERE = Path(__file__).parent
FIXTURES = sorted(HERE.glob("recovery_history*.json"))


def _patches(path: Path) -> set[str]:
    """Patch ids whose markers the history holds."""
    events = json.loads(path.read_text())["events"]
    markers = [e for e in events if e["eventType"] == "EVENT_TYPE_MARKER_RECORDED"]
    found = set()
    for marker in markers:
        attributes = marker["markerRecordedEventAttributes"]
        if attributes["markerName"] == "core_patch":
            payload = attributes["details"]["patch-data"]["payloads"][0]["data"]
            found.add(json.loads(base64.b64decode(payload))["id"])
    return found


def test_every_released_version_has_a_fixture() -> None:
    assert HERE / "recovery_history.json" in FIXTURES
    assert PATCH_V2 not in _patches(HERE / "recovery_history.json"), "the pre-v2 history"
    v2 = [f for f in FIXTURES if f.name.startswith("recovery_history_v2_")]
    assert len(v2) >= 4 and all(PATCH_V2 in _patches(f) for f in v2)


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.stem for f in FIXTURES])
async def test_recorded_recovery_history_replays_without_nondeterminism(fixture: Path) -> None:
    text = await asyncio.to_thread(fixture.read_text)
    history = WorkflowHistory.from_json(f"recovery-{fixture.stem}", text)
    replayer = Replayer(
        workflows=[RecoveryWorkflow],
        workflow_runner=workflow_runner(strict=True),
        data_converter=pydantic_data_converter,
    )
    result = await replayer.replay_workflow(history)
    assert result.replay_failure is None
