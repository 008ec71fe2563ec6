"""Recovery under real faults: Temporal restarted mid-recovery, malformed signals."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from antifragile import binaries
from antifragile.constants import recovery_workflow_id
from antifragile.models.recovery import (
    RecoveryPolicy,
    RecoveryRequest,
    RecoveryResult,
    RecoveryState,
    RecoveryStatus,
    RecoveryStrategy,
)
from antifragile.processes import ServerProcess, free_port, start_temporal_dev_server
from antifragile.recovery_client import start_recovery
from tests.helpers import Listener, stack_env, wait_for

pytestmark = pytest.mark.integration


async def test_recoveries_finish_after_the_temporal_server_restarts_on_its_database(
    tmp_path: Path, redis_url: str, worker_process, task_queue: str
) -> None:
    port = free_port()
    db = tmp_path / "temporal.db"
    server = start_temporal_dev_server(port, db_file=db, log_path=tmp_path / "t.log")
    listener = Listener()
    try:
        env = stack_env(server, redis_url, task_queue)
        worker_process(env)
        client = await Client.connect(f"127.0.0.1:{port}", data_converter=pydantic_data_converter)
        services = [f"svc{i}-{task_queue}" for i in range(3)]
        for name in services:
            await start_recovery(
                client,
                RecoveryRequest(
                    service=name,
                    probe=f"tcp://127.0.0.1:{listener.port}",
                    policy=RecoveryPolicy(initial_delay_ms=3000, max_delay_ms=3000),
                ),
                task_queue=task_queue,
            )

        async def all_backing_off() -> bool:
            states = [
                (
                    await client.get_workflow_handle(recovery_workflow_id(n)).query(
                        "status", result_type=RecoveryStatus
                    )
                ).state
                for n in services
            ]
            return all(s is RecoveryState.WAITING_BACKOFF for s in states)

        await wait_for(all_backing_off)
        server.stop()
        await asyncio.sleep(2)
        server = start_temporal_dev_server(port, db_file=db, log_path=tmp_path / "t2.log")
        await listener.open()
        client = await Client.connect(f"127.0.0.1:{port}", data_converter=pydantic_data_converter)
        for name in services:
            handle = client.get_workflow_handle(
                recovery_workflow_id(name), result_type=RecoveryResult
            )
            result = await asyncio.wait_for(handle.result(), 90)
            assert result.state is RecoveryState.SUCCEEDED
            assert [a.outcome for a in result.status.attempts][-1] == "healthy"
            numbers = [a.number for a in result.status.attempts]
            assert numbers == list(range(1, len(numbers) + 1)), "no attempt lost or repeated"
    finally:
        await listener.close()
        server.stop()


async def _temporal_signal(server: ServerProcess, workflow_id: str, name: str, payload: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        binaries.temporal_cli(),
        "workflow",
        "signal",
        "--address",
        f"127.0.0.1:{server.port}",
        "--workflow-id",
        workflow_id,
        "--name",
        name,
        "--input",
        payload,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await proc.wait()


async def test_malformed_signals_sent_with_the_temporal_cli_change_nothing(
    temporal_client: Client, dev_server: ServerProcess, start_worker, task_queue: str
) -> None:
    listener = Listener()
    await listener.open()
    service = f"mal-{task_queue}"
    async with start_worker(temporal_client, task_queue):
        handle = await start_recovery(
            temporal_client,
            RecoveryRequest(
                service=service,
                probe=f"tcp://127.0.0.1:{listener.port}",
                strategy=RecoveryStrategy.MANUAL,
            ),
            task_queue=task_queue,
        )

        async def awaiting() -> bool:
            s = await handle.query("status", result_type=RecoveryStatus)
            return s.state is RecoveryState.AWAITING_APPROVAL

        await wait_for(awaiting)
        for name, payload in [
            ("approve", '{"approver": ""}'),
            ("approve", '{"who": "x"}'),
            ("approve", '"just a string"'),
            ("reject", "[1, 2, 3]"),
            ("health_changed", '{"healthy": "maybe"}'),
            ("join", '{"priority": -5}'),
        ]:
            assert await _temporal_signal(dev_server, handle.id, name, payload) == 0
        await asyncio.sleep(1)
        status = await handle.query("status", result_type=RecoveryStatus)
        assert status.state is RecoveryState.AWAITING_APPROVAL
        assert status.decisions == [] and status.priority == 1
        desc = await handle.describe()
        assert desc.status is not None and desc.status.name == "RUNNING"
        # ... and the workflow still takes a well-formed decision.
        good = json.dumps({"approver": "alice"})
        assert await _temporal_signal(dev_server, handle.id, "approve", good) == 0
        result = await asyncio.wait_for(handle.result(), 30)
    await listener.close()
    assert result.state is RecoveryState.SUCCEEDED
