"""``chaos report``'s learning section when the target's ledger is missing or silent: one
note, never an error (real dev server)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
from temporalio.client import Client

from antifragile.cli._render.chaos import experiment_learning
from antifragile.constants import PROFILE_WORKFLOW_TYPE, profile_workflow_id
from antifragile.models.chaos import ChaosReport
from antifragile.models.chaos_scenario import ChaosType
from antifragile.models.learning import ProfileInput

pytestmark = pytest.mark.integration


def report(target: str) -> ChaosReport:
    now = datetime.now(UTC)
    return ChaosReport(
        experiment_id=f"chaos-{target}",
        name="x",
        chaos_type=ChaosType.ERROR,
        target=target,
        blast_radius=[target],
        requested_duration_s=1,
        effective_duration_s=1,
        started_at=now,
        ended_at=now,
    )


async def test_missing_ledger_is_a_note(temporal_client: Client) -> None:
    target = f"nobody-{uuid.uuid4().hex[:8]}"
    learning = await experiment_learning(temporal_client, report(target))
    assert learning.observation is None and learning.advice == []
    assert learning.note == f"no ledger {profile_workflow_id(target)} yet"


async def test_silent_ledger_is_a_note_within_the_timeout(temporal_client: Client) -> None:
    target = f"silent-{uuid.uuid4().hex[:8]}"
    await temporal_client.start_workflow(
        PROFILE_WORKFLOW_TYPE,
        ProfileInput(dependency=target),
        id=profile_workflow_id(target),
        task_queue=f"no-worker-{uuid.uuid4().hex[:8]}",  # nobody answers its queries
    )
    began = time.monotonic()
    learning = await experiment_learning(temporal_client, report(target), timeout_s=1.0)
    assert time.monotonic() - began < 5
    assert learning.observation is None
    assert learning.note == (
        f"ledger {profile_workflow_id(target)} did not answer within 1 s "
        "(no worker on its task queue?)"
    )
    await temporal_client.get_workflow_handle(profile_workflow_id(target)).terminate()
