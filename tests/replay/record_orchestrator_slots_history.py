"""Record the orchestrator's slot-release history (run by hand; never over an existing file).

``python -m tests.replay.record_orchestrator_slots_history`` starts a dev server and the
real worker with one slot, and drives the paths added by "slots follow work": a recovery
that waits for a person gives its slot away (``recovery_waiting``), is queued again when
approved (``recovery_resuming``) and gets ``slot_granted`` on admission; a request for it
meanwhile joins it; attempts feed the retry budget (``attempt_finished``). The test plays
the recovery's side of the messages, so the recording does not depend on the recovery's
version. Writes ``orchestrator_history_v2_slot_release.json`` here (refuses to overwrite).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from temporalio.client import Client

from antifragile.constants import (
    SIGNAL_ATTEMPT_FINISHED,
    SIGNAL_RECOVERY_RESUMING,
    SIGNAL_RECOVERY_WAITING,
    orchestrator_workflow_id,
    recovery_workflow_id,
)
from antifragile.models.orchestrator import QueueView
from antifragile.models.recovery import RecoveryPolicy, RecoveryRequest
from antifragile.models.slots import AttemptFinished, RecoveryResuming, RecoveryWaiting
from antifragile.orchestrator.client import orchestrator_queue, request_recovery
from antifragile.policy import RecoveryPolicyConfig, WorkerPolicy
from antifragile.settings import Settings
from antifragile.stack.processes import free_port, start_temporal_dev_server
from tests.replay.record_orchestrator_history import connect
from workers.main import build_worker

OUT = Path(__file__).with_name("orchestrator_history_v2_slot_release.json")
QUEUE = "replay-slots"


async def record() -> None:
    """Drive one orchestrator run through the slot-release paths and save its history."""
    if OUT.exists():
        sys.exit(f"{OUT} exists: fixtures are never re-recorded; choose a new name")
    with tempfile.TemporaryDirectory() as tmp:
        server = start_temporal_dev_server(db_file=Path(tmp) / "t.db")
        try:
            client = await connect(server.port)
            listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
            up = f"tcp://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
            down = f"tcp://127.0.0.1:{free_port()}"
            slow = RecoveryPolicy(initial_delay_ms=600_000, max_delay_ms=600_000)
            policy = WorkerPolicy(recovery=RecoveryPolicyConfig(max_concurrent=1))
            orchestrator = client.get_workflow_handle(orchestrator_workflow_id(QUEUE))
            stuck = recovery_workflow_id("stuck")
            async with build_worker(client, Settings(task_queue=QUEUE), policy):
                await _request(client, "stuck", 2, down, slow)
                await _until(client, lambda v: [r.service for r in v.running] == ["stuck"])
                await _request(client, "next", 2, down, slow)
                for number in (1, 2, 3):
                    await orchestrator.signal(
                        SIGNAL_ATTEMPT_FINISHED,
                        AttemptFinished(
                            service="stuck",
                            workflow_id=stuck,
                            attempt=number,
                            succeeded=False,
                            at=datetime.now(UTC),
                        ),
                    )
                await orchestrator.signal(
                    SIGNAL_RECOVERY_WAITING,
                    RecoveryWaiting(service="stuck", workflow_id=stuck, reason="3 attempts failed"),
                )
                await _until(client, lambda v: [r.service for r in v.running] == ["next"])
                # A request for the recovery awaiting approval joins it (fire-and-forget).
                await _request(client, "stuck", 1, down, slow, want_position=False)
                await _request(client, "later", 2, up, slow)
                await orchestrator.signal(
                    SIGNAL_RECOVERY_RESUMING,
                    RecoveryResuming(service="stuck", workflow_id=stuck, priority=1),
                )
                await _until(client, lambda v: [w.service for w in v.waiting][:1] == ["stuck"])
                await client.get_workflow_handle(recovery_workflow_id("next")).terminate("x")
                await _until(client, lambda v: [r.service for r in v.running] == ["stuck"])
                await asyncio.sleep(1)  # slot_granted delivered
                await client.get_workflow_handle(stuck).terminate("x")
                view = await _until(client, lambda v: v.finished.get("succeeded") == 1)
                OUT.write_text((await orchestrator.fetch_history()).to_json())
                print(f"wrote {OUT}: admitted {view.admitted_total}, finished {view.finished}")
                await orchestrator.terminate("recorded")
            listener.close()
        finally:
            server.stop()


async def _request(
    client: Client,
    name: str,
    priority: int,
    probe: str,
    policy: RecoveryPolicy,
    want_position: bool = True,
) -> None:
    await request_recovery(
        client,
        RecoveryRequest(service=name, priority=priority, probe=probe, policy=policy),
        task_queue=QUEUE,
        want_position=want_position,
    )


async def _until(client: Client, check: Callable[[QueueView], bool]) -> QueueView:
    for _ in range(300):
        view = await orchestrator_queue(client, task_queue=QUEUE)
        if check(view):
            return view
        await asyncio.sleep(0.1)
    raise RuntimeError(f"condition never met: {view.model_dump_json()}")


if __name__ == "__main__":
    asyncio.run(record())
