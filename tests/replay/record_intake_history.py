"""Record the intake history the replay test replays (run by hand after a change).

``python -m tests.replay.record_intake_history`` starts a dev server and the real worker,
sends fire-and-forget requests for services of one intake shard in three bursts, waits
for the intake to forward them and to end idle (a minute), and writes
``intake_history.json`` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path

from temporalio.service import RPCError

from antifragile.constants import (
    intake_shard,
    intake_workflow_id,
    orchestrator_workflow_id,
    recovery_workflow_id,
)
from antifragile.models.recovery import RecoveryPolicy, RecoveryRequest
from antifragile.models.recovery_intake import IntakeResult
from antifragile.orchestrator.client import orchestrator_queue, request_recovery
from antifragile.policy import RecoveryPolicyConfig, WorkerPolicy
from antifragile.settings import Settings
from antifragile.stack.processes import start_temporal_dev_server
from tests.replay.record_orchestrator_history import connect
from workers.main import build_worker

OUT = Path(__file__).with_name("intake_history.json")
QUEUE = "replay-intake"


def same_shard_services(count: int) -> list[str]:
    """Service names that all go to shard 0's intake."""
    names = (f"svc-{i}" for i in range(100_000))
    return [n for n in names if intake_shard(n) == 0][:count]


async def record() -> None:
    """Drive one intake run to its idle end and save its history."""
    with tempfile.TemporaryDirectory() as tmp:
        server = start_temporal_dev_server(db_file=Path(tmp) / "t.db")
        try:
            client = await connect(server.port)
            slow = RecoveryPolicy(initial_delay_ms=600_000, max_delay_ms=600_000)
            policy = WorkerPolicy(recovery=RecoveryPolicyConfig(max_concurrent=1))
            services = same_shard_services(12)
            orchestrator_id = orchestrator_workflow_id(QUEUE)
            async with build_worker(client, Settings(task_queue=QUEUE), policy):
                for burst in (services[:1], services[1:5], services[5:]):
                    await asyncio.gather(
                        *(
                            request_recovery(
                                client,
                                RecoveryRequest(
                                    service=name, probe="tcp://127.0.0.1:9", policy=slow
                                ),
                                task_queue=QUEUE,
                                want_position=False,
                            )
                            for name in burst
                        )
                    )
                    await asyncio.sleep(0.5)
                intake = client.get_workflow_handle(
                    intake_workflow_id(orchestrator_id, 0), result_type=IntakeResult
                )
                result = await intake.result()
                view = await orchestrator_queue(client, task_queue=QUEUE)
                OUT.write_text((await intake.fetch_history()).to_json())
                print(
                    f"wrote {OUT}: forwarded {result.forwarded}, orchestrator holds "
                    f"{view.waiting_total} waiting and {len(view.running)} running"
                )
                for name in services:  # the one admitted (the others only wait)
                    with contextlib.suppress(RPCError):
                        await client.get_workflow_handle(recovery_workflow_id(name)).terminate()
                await client.get_workflow_handle(orchestrator_id).terminate("recorded")
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(record())
