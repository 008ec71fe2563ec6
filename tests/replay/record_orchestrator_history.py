"""Record the orchestrator history the replay test replays (run by hand after a change).

``python -m tests.replay.record_orchestrator_history`` starts a dev server and the real
worker, drives an orchestrator through queueing, merge, reprioritise, remove, success
and termination with real TCP probes, and writes ``orchestrator_history.json`` here.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from antifragile.constants import (
    ORCHESTRATOR_WORKFLOW_ID,
    UPDATE_REMOVE,
    UPDATE_REPRIORITISE,
    recovery_workflow_id,
)
from antifragile.models.orchestrator import QueueChangeResult, RemoveRecovery, Reprioritise
from antifragile.models.recovery import RecoveryPolicy, RecoveryRequest
from antifragile.orchestrator.client import orchestrator_queue, request_recovery
from antifragile.policy import RecoveryPolicyConfig, WorkerPolicy
from antifragile.settings import Settings
from antifragile.stack.processes import free_port, start_temporal_dev_server
from workers.main import build_worker

OUT = Path(__file__).with_name("orchestrator_history.json")


async def connect(port: int) -> Client:
    """Connect once the server's frontend reports healthy."""
    for _ in range(50):
        try:
            return await Client.connect(f"127.0.0.1:{port}", data_converter=pydantic_data_converter)
        except RuntimeError:
            await asyncio.sleep(0.2)
    raise RuntimeError("the dev server never became healthy")


async def record() -> None:
    """Drive one orchestrator run and save its history."""
    with tempfile.TemporaryDirectory() as tmp:
        server = start_temporal_dev_server(db_file=Path(tmp) / "t.db")
        try:
            client = await connect(server.port)
            queue = "replay"
            listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
            up = f"tcp://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
            down = f"tcp://127.0.0.1:{free_port()}"
            slow = RecoveryPolicy(initial_delay_ms=600_000, max_delay_ms=600_000)
            policy = WorkerPolicy(recovery=RecoveryPolicyConfig(max_concurrent=1))
            async with build_worker(client, Settings(task_queue=queue), policy):
                for name, priority, probe in [
                    ("stuck", 1, down),
                    ("db", 3, up),
                    ("cache", 2, up),
                    ("db", 1, up),
                    ("search", 5, up),
                    ("mail", 4, up),
                ]:
                    await request_recovery(
                        client,
                        RecoveryRequest(service=name, priority=priority, probe=probe, policy=slow),
                        task_queue=queue,
                    )
                handle = client.get_workflow_handle(ORCHESTRATOR_WORKFLOW_ID)
                await handle.execute_update(
                    UPDATE_REPRIORITISE,
                    Reprioritise(service="search", priority=0),
                    result_type=QueueChangeResult,
                )
                await handle.execute_update(
                    UPDATE_REMOVE, RemoveRecovery(service="mail"), result_type=QueueChangeResult
                )
                await asyncio.sleep(1)
                await client.get_workflow_handle(recovery_workflow_id("stuck")).terminate("x")
                for _ in range(100):
                    view = await orchestrator_queue(client)
                    if view.finished.get("succeeded") == 3:
                        break
                    await asyncio.sleep(0.2)
                OUT.write_text((await handle.fetch_history()).to_json())
                print(f"wrote {OUT}: admitted {view.admitted_total}, finished {view.finished}")
                await handle.terminate("recorded")
            listener.close()
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(record())
