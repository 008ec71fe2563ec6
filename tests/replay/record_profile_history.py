"""Record the ledger fixtures: ``python -m tests.replay.record_profile_history``.

Starts a dev server and the real worker, and writes two NEW files here (an existing fixture
is never overwritten: a new recording gets a new name):

- ``profile_history.json``: the first run of ``profile-{service}``, started with small
  limits (2 per kind, 3 batches per run): a batch of three experiments (one evicted), a
  batch with a duplicate and a traffic window, then the outage a real recovery records at
  its end (its third batch), after which the run continues as new.
- ``recovery_history_v3_learning.json``: that recovery (a TCP probe that answers), which
  ends SUCCEEDED and records its outage (patch ``learning-observations``).
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio.client import WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy

from antifragile.constants import PROFILE_WORKFLOW_TYPE, profile_workflow_id
from antifragile.learning.client import get_profile, record_observations
from antifragile.models.learning import (
    ExperimentObservation,
    ProfileInput,
    ProfileLimits,
    TrafficObservation,
)
from antifragile.models.recovery import RecoveryRequest
from antifragile.policy import WorkerPolicy
from antifragile.recovery.client import start_recovery
from antifragile.settings import Settings
from antifragile.stack.processes import start_temporal_dev_server
from tests.replay.record_orchestrator_history import connect
from workers.main import build_worker

HERE = Path(__file__).parent
PROFILE_OUT = HERE / "profile_history.json"
RECOVERY_OUT = HERE / "recovery_history_v3_learning.json"
QUEUE = "replay-profile"
SERVICE = "ledger-db"
LIMITS = ProfileLimits(max_per_kind=2, batches_per_run=3)


def experiment(source: str, minutes_ago: int) -> ExperimentObservation:
    """An experiment on :data:`SERVICE` that started ``minutes_ago``."""
    start = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return ExperimentObservation(
        dependency=SERVICE,
        source_id=source,
        chaos_type="ERROR",
        fault_start=start,
        fault_end=start + timedelta(seconds=30),
        detected_at=start + timedelta(seconds=2),
        recovered_at=start + timedelta(seconds=36),
        steady_state_held=True,
        calls_failed=12,
        calls_refused=40,
        outcome="COMPLETED",
    )


async def record() -> None:
    """Drive one ledger run to its continue-as-new and save both histories."""
    for out in (PROFILE_OUT, RECOVERY_OUT):
        if out.exists():
            raise SystemExit(f"{out} exists: fixtures are never re-recorded (add a new name)")
    with tempfile.TemporaryDirectory() as tmp:
        server = start_temporal_dev_server(db_file=Path(tmp) / "t.db")
        try:
            client = await connect(server.port)
            listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
            up = f"tcp://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
            async with build_worker(client, Settings(task_queue=QUEUE), WorkerPolicy()):
                ledger = await client.start_workflow(
                    PROFILE_WORKFLOW_TYPE,
                    ProfileInput(dependency=SERVICE, limits=LIMITS),
                    id=profile_workflow_id(SERVICE),
                    task_queue=QUEUE,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                )
                first_run = ledger.result_run_id
                batch = [experiment(f"chaos-{i}", 30 - i) for i in range(3)]
                await record_observations(client, SERVICE, batch, task_queue=QUEUE)
                await asyncio.sleep(0.5)
                window = TrafficObservation(
                    dependency=SERVICE,
                    source_id="pod-1/window-1",
                    window_start=datetime.now(UTC) - timedelta(minutes=1),
                    window_s=10,
                    calls=250,
                    failures=3,
                )
                await record_observations(
                    client, SERVICE, [experiment("chaos-2", 28), window], task_queue=QUEUE
                )
                await asyncio.sleep(0.5)
                recovery = await start_recovery(
                    client, RecoveryRequest(service=SERVICE, probe=up), task_queue=QUEUE
                )
                await recovery.result()
                old = client.get_workflow_handle(ledger.id, run_id=first_run)
                for _ in range(100):
                    if (await old.describe()).status is WorkflowExecutionStatus.CONTINUED_AS_NEW:
                        break
                    await asyncio.sleep(0.1)
                view = await get_profile(client, SERVICE)
                PROFILE_OUT.write_text((await old.fetch_history()).to_json())
                RECOVERY_OUT.write_text((await recovery.fetch_history()).to_json())
                assert view is not None
                print(f"wrote {PROFILE_OUT.name} and {RECOVERY_OUT.name}: {view.counts}")
                await ledger.terminate("recorded")
            listener.close()
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(record())
