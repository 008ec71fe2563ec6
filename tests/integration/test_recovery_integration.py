"""Recoveries on a real Temporal dev server with real probes, workers and CLI."""

from __future__ import annotations

import asyncio
import json

import pytest
from temporalio.client import Client

from antifragile.constants import recovery_workflow_id
from antifragile.models.recovery import (
    RecoveryPolicy,
    RecoveryRequest,
    RecoveryResult,
    RecoveryState,
    RecoveryStatus,
    RecoveryStrategy,
)
from antifragile.recovery.client import start_recovery
from antifragile.stack import binaries
from antifragile.stack.processes import ServerProcess, free_port
from tests.helpers import Listener, run_cli, stack_env, wait_for

pytestmark = pytest.mark.integration


async def status_of(client: Client, service: str) -> RecoveryStatus:
    handle = client.get_workflow_handle(recovery_workflow_id(service))
    return await handle.query("status", result_type=RecoveryStatus)


async def test_recovery_succeeds_once_the_probed_service_comes_back_after_two_failures(
    temporal_client: Client, start_worker, task_queue: str
) -> None:
    listener = Listener()
    service = f"db-{task_queue}"
    request = RecoveryRequest(
        service=service,
        probe=f"tcp://127.0.0.1:{listener.port}",
        policy=RecoveryPolicy(initial_delay_ms=500, max_delay_ms=1000),
    )
    async with start_worker(temporal_client, task_queue):
        handle = await start_recovery(temporal_client, request, task_queue=task_queue)

        async def two_failed() -> bool:
            s = await status_of(temporal_client, service)
            return s.attempt == 2 and s.state is RecoveryState.WAITING_BACKOFF

        await wait_for(two_failed)
        await listener.open()
        try:
            result = await handle.result()
        finally:
            await listener.close()
    assert result.state is RecoveryState.SUCCEEDED
    assert [a.outcome for a in result.status.attempts] == ["unhealthy", "unhealthy", "healthy"]


async def test_a_manual_recovery_approved_through_the_cli_succeeds_and_is_searchable(
    temporal_client: Client,
    dev_server: ServerProcess,
    redis_url: str,
    task_queue: str,
    start_worker,
) -> None:
    listener = Listener()
    await listener.open()
    env = stack_env(dev_server, redis_url, task_queue)
    service = f"payments-{task_queue}"
    async with start_worker(temporal_client, task_queue):
        started = await run_cli(
            env,
            "recovery",
            "start",
            service,
            "--probe",
            f"tcp://127.0.0.1:{listener.port}",
            "--strategy",
            "manual",
            "--json",
        )
        assert started.code == 0, started.stderr

        async def awaiting() -> bool:
            s = await status_of(temporal_client, service)
            return s.state is RecoveryState.AWAITING_APPROVAL

        await wait_for(awaiting)
        approved = await run_cli(
            env, "recovery", "approve", service, "--by", "alice", "--note", "checked the dashboards"
        )
        assert approved.code == 0, approved.stderr
        assert "approved by alice" in approved.stdout
        handle = temporal_client.get_workflow_handle(
            recovery_workflow_id(service), result_type=RecoveryResult
        )
        result = await handle.result()
    await listener.close()
    assert result.state is RecoveryState.SUCCEEDED
    assert result.status.strategy is RecoveryStrategy.MANUAL
    assert result.status.decisions[0].note == "checked the dashboards"

    proc = await asyncio.create_subprocess_exec(
        binaries.temporal_cli(),
        "workflow",
        "list",
        "--address",
        f"127.0.0.1:{dev_server.port}",
        "--query",
        f'AfService="{service}"',
        "--output",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    found = json.loads(out)
    assert [w["execution"]["workflowId"] for w in found] == [recovery_workflow_id(service)]


async def test_cli_exits_2_with_one_line_for_bad_input_and_nothing_to_act_on(
    temporal_client: Client,
    dev_server: ServerProcess,
    redis_url: str,
    task_queue: str,
    start_worker,
) -> None:
    env = stack_env(dev_server, redis_url, task_queue)
    bad_probe = await run_cli(env, "recovery", "start", "x", "--probe", "ftp://nowhere")
    unknown = await run_cli(env, "recovery", "status", "no-such-service")
    bad_delay = await run_cli(
        env, "recovery", "start", "x", "--probe", "tcp://h:1", "--initial-delay", "soon"
    )
    for result in (bad_probe, unknown, bad_delay):
        assert result.code == 2
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
    assert "probe" in bad_probe.stderr
    assert "no-such-service" in unknown.stderr
    assert "--initial-delay" in bad_delay.stderr

    listener = Listener()
    service = f"queue-{task_queue}"
    async with start_worker(temporal_client, task_queue):
        await run_cli(
            env,
            "recovery",
            "start",
            service,
            "--probe",
            f"tcp://127.0.0.1:{listener.port}",
            "--initial-delay",
            "1h",
            "--max-delay",
            "1h",
        )

        async def backing_off() -> bool:
            s = await status_of(temporal_client, service)
            return s.state is RecoveryState.WAITING_BACKOFF

        await wait_for(backing_off)
        premature = await run_cli(env, "recovery", "approve", service, "--by", "bob")
        assert premature.code == 2
        assert "nothing awaits approval" in premature.stderr
        cancelled = await run_cli(env, "recovery", "cancel", service)
        assert cancelled.code == 0, cancelled.stderr
        listed = await run_cli(env, "recovery", "list", "--json")
    rows = json.loads(listed.stdout)
    mine = [r for r in rows if r["service"] == service]
    assert mine and mine[0]["state"] == RecoveryState.CANCELLED.value


async def test_cli_names_the_address_when_temporal_is_unreachable(
    dev_server: ServerProcess, redis_url: str
) -> None:
    env = stack_env(dev_server, redis_url, "unused")
    env["ANTIFRAGILE_TEMPORAL_ADDRESS"] = f"127.0.0.1:{free_port()}"
    result = await run_cli(env, "recovery", "list")
    assert result.code == 2
    assert env["ANTIFRAGILE_TEMPORAL_ADDRESS"] in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_wait_on_a_recovery_that_ends_failed_exits_1_with_the_reason(
    temporal_client: Client,
    dev_server: ServerProcess,
    redis_url: str,
    task_queue: str,
    start_worker,
) -> None:
    # The CLI carries a hash the worker does not accept: the recovery fails before acting.
    env = stack_env(
        dev_server, redis_url, task_queue, ANTIFRAGILE_CONSTITUTIONAL_HASH="0123456789abcdef"
    )
    async with start_worker(temporal_client, task_queue):
        result = await run_cli(
            env, "recovery", "start", f"bad-{task_queue}", "--probe", "tcp://127.0.0.1:9", "--wait"
        )
    assert result.code == 1
    assert "ended FAILED" in result.stderr
    assert "constitutional hash mismatch: got 01234567…" in result.stderr
    assert "0123456789abcdef" not in result.stderr + result.stdout


async def test_the_worker_process_shuts_down_cleanly_on_sigterm(
    dev_server: ServerProcess, redis_url: str, task_queue: str, worker_process
) -> None:
    worker = worker_process(stack_env(dev_server, redis_url, task_queue))
    await asyncio.sleep(3)  # let it connect and start polling
    assert worker.proc.poll() is None, worker.log.read_text()
    worker.stop()
    assert worker.proc.returncode == 0, worker.log.read_text()
    assert "worker stopping" in worker.log.read_text()
