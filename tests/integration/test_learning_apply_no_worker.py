"""``advise apply``/``revert`` when no worker runs the ledger: ``--wait`` is kept.

The ledger exists (its signal is accepted) but no worker answers its queries (every
worker was killed): the client must give up within the wait it was given, not hang on a
query the server holds until its own deadline.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.client import Client

from antifragile.learning.client import (
    ChangeNotDecided,
    apply_advice,
    record_observations,
    revert_config,
)
from antifragile.models.learning import OutageObservation

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("action", ["apply", "revert"])
async def test_the_wait_is_kept_when_no_worker_answers(
    temporal_client: Client, task_queue: str, action: str
) -> None:
    dependency = f"dep-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    observation = OutageObservation(
        dependency=dependency,
        source_id="rec-1/run",
        started_at=now - timedelta(seconds=10),
        recovered_at=now - timedelta(seconds=7),
        attempts=1,
        probes=2,
        outcome="recovered",
    )
    await record_observations(temporal_client, dependency, [observation], task_queue=task_queue)
    started = time.monotonic()
    try:
        with pytest.raises(ChangeNotDecided, match="not decided within 2 s"):
            if action == "apply":
                await apply_advice(
                    temporal_client, dependency, by="alice", timeout=timedelta(seconds=2)
                )
            else:
                await revert_config(
                    temporal_client, dependency, by="alice", timeout=timedelta(seconds=2)
                )
        assert time.monotonic() - started < 6.0
    finally:
        await temporal_client.get_workflow_handle(f"profile-{dependency}").terminate()
