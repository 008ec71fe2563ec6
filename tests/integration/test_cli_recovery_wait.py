"""``recovery start --wait`` and ``recovery approve/reject`` through the real CLI.

A real dev server, the real worker (in this process) and the CLI as a subprocess, as an
operator runs it: live progress, the hint that a person is needed, ``--timeout`` (exit 1
with the state reached), Ctrl-C (exit 130, the recovery goes on), a queued request that
says why it waits, and decisions signed with ``ANTIFRAGILE_APPROVER_KEY``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from datetime import datetime
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from antifragile.constants import (
    intake_shard,
    intake_workflow_id,
    orchestrator_workflow_id,
    recovery_workflow_id,
)
from antifragile.hashing import verify_decision
from antifragile.models.recovery import (
    RecoveryRequest,
    RecoveryResult,
    RecoveryState,
    RecoveryStatus,
)
from antifragile.orchestrator.client import orchestrator_queue, request_recovery
from antifragile.policy import RecoveryPolicyConfig, WorkerPolicy
from antifragile.settings import Settings
from antifragile.stack.processes import ServerProcess, start_temporal_dev_server
from antifragile.temporal_client import connect, ensure_search_attributes
from tests.helpers import REPO, Listener, run_cli, stack_env, wait_for
from workers.main import build_worker

pytestmark = pytest.mark.integration

KEY = "approver-key-0123456789abcdef"


async def end(client: Client, task_queue: str, *services: str) -> None:
    """Terminate what a test left running (its recoveries and its orchestrator)."""
    for workflow_id in (*map(recovery_workflow_id, services), orchestrator_workflow_id(task_queue)):
        handle = client.get_workflow_handle(workflow_id)
        try:
            if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                await handle.terminate("test over")
        except Exception:
            pass


async def test_wait_follows_a_recovery_to_success(
    temporal_client: Client,
    dev_server: ServerProcess,
    redis_url: str,
    task_queue: str,
    start_worker,
) -> None:
    listener = Listener()
    await listener.open()
    service = f"up-{task_queue}"
    env = stack_env(dev_server, redis_url, task_queue)
    try:
        async with start_worker(temporal_client, task_queue):
            result = await run_cli(
                env,
                "recovery",
                "start",
                service,
                "--probe",
                f"tcp://127.0.0.1:{listener.port}",
                "--strategy",
                "immediate",
                "--wait",
            )
            await end(temporal_client, task_queue)
    finally:
        await listener.close()
    assert result.code == 0, result.stderr
    assert "admitted; following" in result.stderr
    assert "SUCCEEDED" in result.stdout


async def test_wait_says_a_person_is_needed_and_times_out_with_the_state(
    temporal_client: Client,
    dev_server: ServerProcess,
    redis_url: str,
    task_queue: str,
    start_worker,
) -> None:
    service = f"manual-{task_queue}"
    env = stack_env(dev_server, redis_url, task_queue)
    async with start_worker(temporal_client, task_queue):
        result = await run_cli(
            env,
            "recovery",
            "start",
            service,
            "--probe",
            "tcp://127.0.0.1:9",
            "--strategy",
            "manual",
            "--wait",
            "--timeout",
            "4s",
        )
        await end(temporal_client, task_queue, service)
    assert result.code == 1, result.stderr
    assert "AWAITING_APPROVAL" in result.stderr
    assert f"a person is needed: antifragile recovery approve {service} --by NAME" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: gave up waiting (--timeout): the recovery of {service} is AWAITING_APPROVAL "
        f"and goes on; follow it with: antifragile recovery status {service}"
    )
    assert "AWAITING_APPROVAL" in result.stdout  # the state reached, as `status` shows it


async def test_wait_on_a_queued_request_says_it_is_queued_and_why(
    temporal_client: Client,
    dev_server: ServerProcess,
    redis_url: str,
    task_queue: str,
    start_worker,
) -> None:
    holder, waiting = f"holder-{task_queue}", f"waiting-{task_queue}"
    env = stack_env(dev_server, redis_url, task_queue)
    policy = WorkerPolicy(
        recovery=RecoveryPolicyConfig(max_concurrent=1, commands={"hold": ["sleep", "8"]})
    )
    async with start_worker(temporal_client, task_queue, policy=policy):
        await request_recovery(
            temporal_client,
            RecoveryRequest(service=holder, probe="tcp://127.0.0.1:9", action="command:hold"),
            task_queue=task_queue,
        )

        async def holding() -> bool:
            view = await orchestrator_queue(temporal_client, task_queue=task_queue)
            return [r.service for r in view.running] == [holder]

        await wait_for(holding, timeout=30)
        result = await run_cli(
            env,
            "recovery",
            "start",
            waiting,
            "--probe",
            "tcp://127.0.0.1:9",
            "--wait",
            "--timeout",
            "3s",
        )
        await end(temporal_client, task_queue, holder, waiting)
    assert result.code == 1, result.stderr
    assert "QUEUED" in result.stderr
    assert f"position 1 of 1, priority 1; waiting for: a free slot (all 1 busy: {holder})" in (
        result.stderr
    )
    assert f"the recovery of {waiting} is QUEUED and goes on" in result.stderr


async def read_until(stream: asyncio.StreamReader, text: str, timeout: float = 60) -> str:
    seen = ""
    async with asyncio.timeout(timeout):
        while text not in seen:
            line = await stream.readline()
            if not line:
                raise AssertionError(f"stream ended before {text!r}: {seen}")
            seen += line.decode()
    return seen


async def test_ctrl_c_leaves_the_recovery_running_and_a_signed_approval_goes_through(
    temporal_client: Client,
    dev_server: ServerProcess,
    redis_url: str,
    task_queue: str,
    start_worker,
) -> None:
    listener = Listener()
    await listener.open()
    service = f"signed-{task_queue}"
    env = stack_env(dev_server, redis_url, task_queue)
    policy = WorkerPolicy(recovery=RecoveryPolicyConfig(approvers=["alice"]))
    try:
        async with start_worker(temporal_client, task_queue, policy=policy):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "from antifragile.cli import main; main()",
                "recovery",
                "start",
                service,
                "--probe",
                f"tcp://127.0.0.1:{listener.port}",
                "--strategy",
                "manual",
                "--wait",
                cwd=REPO,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.DEVNULL,
            )
            assert proc.stderr is not None
            await read_until(proc.stderr, "a person is needed")
            proc.send_signal(signal.SIGINT)
            rest = (await asyncio.wait_for(proc.stderr.read(), 30)).decode()
            code = await proc.wait()
            handle = temporal_client.get_workflow_handle(
                recovery_workflow_id(service), result_type=RecoveryResult
            )
            still = (await handle.describe()).status

            short = await run_cli(
                {**env, "ANTIFRAGILE_APPROVER_KEY": "short"},
                "recovery",
                "approve",
                service,
                "--by",
                "alice",
            )
            approved = await run_cli(
                {**env, "ANTIFRAGILE_APPROVER_KEY": KEY},
                "recovery",
                "approve",
                service,
                "--by",
                "alice",
                "--note",
                "db is back",
            )
            result = await handle.result()
            history = await handle.fetch_history()
            first_run_id = (
                await handle.describe()
            ).raw_description.workflow_execution_info.first_run_id
            await end(temporal_client, task_queue)
    finally:
        await listener.close()
    assert code == 130
    assert (
        rest.strip()
        .splitlines()[-1]
        .startswith(
            f"stopped waiting; the recovery of {service} goes on (AWAITING_APPROVAL). "
            f"Follow it: antifragile recovery status {service}"
        )
    ), rest
    assert still == WorkflowExecutionStatus.RUNNING

    assert short.code == 2
    assert (
        short.stderr.strip() == "error: ANTIFRAGILE_APPROVER_KEY: a key must be at least 16 bytes"
    )

    assert approved.code == 0, approved.stderr
    assert approved.stdout.startswith(f"approved by alice: recovery of {service} is now")
    assert result.state is RecoveryState.SUCCEEDED
    signals = [
        e.workflow_execution_signaled_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        and e.workflow_execution_signaled_event_attributes.signal_name == "approve"
    ]
    assert len(signals) == 1, "the short key must have sent nothing"
    payload = json.loads(signals[0].input.payloads[0].data)
    assert payload["approver"] == "alice" and payload["note"] == "db is back"
    assert len(payload["signature"]) == 64
    reason = verify_decision(
        KEY.encode(),
        payload["signature"],
        workflow_id=recovery_workflow_id(service),
        first_run_id=first_run_id,
        decision="approved",
        approver="alice",
        signed_at=datetime.fromisoformat(payload["signed_at"]),
        now=datetime.fromisoformat(payload["signed_at"]),
    )
    assert reason is None, reason
    status: RecoveryStatus = result.status
    assert [d.approver for d in status.decisions] == ["alice"]


async def test_temporal_dying_during_wait_is_one_line_and_the_exit_code_of_a_fresh_command(
    tmp_path: Path, redis_url: str, task_queue: str
) -> None:
    # A server of its own, killed with SIGKILL while the CLI waits for a person.
    server = start_temporal_dev_server(
        db_file=tmp_path / "temporal.db", log_path=tmp_path / "server.log"
    )
    service = f"lost-{task_queue}"
    env = stack_env(server, redis_url, task_queue)
    try:
        settings = Settings(temporal_address=f"127.0.0.1:{server.port}", task_queue=task_queue)
        client = await connect(settings)
        await ensure_search_attributes(client)
        worker = build_worker(client, settings, WorkerPolicy())
        await worker.__aenter__()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "from antifragile.cli import main; main()",
                "recovery",
                "start",
                service,
                "--probe",
                "tcp://127.0.0.1:9",
                "--strategy",
                "manual",
                "--wait",
                cwd=REPO,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.DEVNULL,
            )
            assert proc.stderr is not None and proc.stdout is not None
            seen = await read_until(proc.stderr, "a person is needed")
            server.proc.kill()
            rest = (await asyncio.wait_for(proc.stderr.read(), 90)).decode()
            out = (await proc.stdout.read()).decode()
            code = await proc.wait()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.__aexit__(None, None, None), 10)
        fresh = await run_cli(env, "recovery", "status", service)
    finally:
        server.stop()
    assert "AWAITING_APPROVAL" in seen
    # Nothing on stdout (the core's retry warnings went there), one line on stderr.
    assert out == "", out[-500:]
    assert "WARN" not in rest and "Traceback" not in rest, rest[-2000:]
    lines = rest.strip().splitlines()
    assert len(lines) == 1, rest[-2000:]
    assert lines[0].startswith(f"error: cannot reach Temporal at 127.0.0.1:{server.port} "), rest
    assert f"the recovery of {service} goes on" in lines[0]
    assert code == fresh.code == 2, (code, fresh.stderr)
    assert fresh.stderr.startswith(f"error: cannot reach Temporal at 127.0.0.1:{server.port} ")


async def test_ctrl_c_while_the_request_is_in_flight_never_says_nothing_was_started(
    temporal_client: Client, dev_server: ServerProcess, redis_url: str, task_queue: str
) -> None:
    # No worker: the enqueue update waits for one, with the orchestrator already started.
    service = f"inflight-{task_queue}"
    env = stack_env(dev_server, redis_url, task_queue)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from antifragile.cli import main; main()",
        "recovery",
        "start",
        service,
        "--probe",
        "tcp://127.0.0.1:9",
        "--wait",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    orchestrator = temporal_client.get_workflow_handle(orchestrator_workflow_id(task_queue))

    async def started() -> bool:
        try:
            await orchestrator.describe()
        except Exception:
            return False
        return True

    try:
        await wait_for(started, timeout=30)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await end(temporal_client, task_queue)
    assert proc.returncode == 130, err.decode()
    assert "Traceback" not in err.decode() and "never retrieved" not in err.decode(), err.decode()
    line = err.decode().strip().splitlines()[-1]
    assert "nothing was started" not in line, line
    assert line == (
        "interrupted while the request was being sent: it may have been queued; "
        "see antifragile recovery queue"
    ), line


async def test_with_no_worker_start_hands_the_request_over_and_wait_says_what_is_missing(
    temporal_client: Client, dev_server: ServerProcess, redis_url: str, task_queue: str
) -> None:
    # The worker is down (a careless deploy): the enqueue update is never taken. It was a
    # traceback after 10 s (the SDK's own timeout error escaped the signal fallback).
    service = f"noworker-{task_queue}"
    env = stack_env(dev_server, redis_url, task_queue)
    try:
        result = await run_cli(
            env,
            "recovery",
            "start",
            service,
            "--probe",
            "tcp://127.0.0.1:9",
            "--wait",
            "--timeout",
            "12s",
        )
        intake = temporal_client.get_workflow_handle(
            intake_workflow_id(orchestrator_workflow_id(task_queue), intake_shard(service))
        )
        history = await intake.fetch_history()
        await intake.terminate("test over")
    finally:
        await end(temporal_client, task_queue)
    assert "Traceback" not in result.stderr and "never retrieved" not in result.stderr, (
        result.stderr[-3000:]
    )
    assert result.code == 1, result.stderr
    assert f"is a worker running on task queue {task_queue!r}?" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: gave up waiting (--timeout)")
    # The request is durable: a signal waits in its intake's history for a worker.
    signals = [
        e.workflow_execution_signaled_event_attributes.signal_name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]
    assert signals, "the request was lost"
