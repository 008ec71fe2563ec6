"""A worker SIGKILLed while a recovery's action or probe runs: the same recovery completes.

Real dev server, the real worker as a subprocess (``python -m workers``), a real policy
command and a real HTTP probe. The step interrupted by the crash is retried on the next
worker inside the same attempt (heartbeat timeout, then a retry), with the same
idempotency key; attempt numbers stay contiguous and nothing fails the recovery.

Locally each test was run ten times in a row before issue 10 was resolved; CI runs it once.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from temporalio.client import Client

from antifragile.models.recovery import (
    RecoveryRequest,
    RecoveryResult,
    RecoveryState,
    RecoveryStrategy,
)
from antifragile.recovery.client import start_recovery
from antifragile.stack.processes import ServerProcess
from tests.helpers import Listener, WorkerProcess, stack_env, wait_for, workflow_task_failures

pytestmark = pytest.mark.integration

RECOVERY_DEADLINE_S = 120.0
"""Bound on the whole recovery after the crash (heartbeat timeout 10 s + a retry)."""


async def test_a_worker_killed_during_the_action_retries_it_in_the_same_attempt(
    temporal_client: Client,
    dev_server: ServerProcess,
    redis_url: str,
    task_queue: str,
    worker_process: Callable[[dict[str, str]], WorkerProcess],
    tmp_path: Path,
) -> None:
    listener = Listener()
    await listener.open()
    ledger = tmp_path / "actions.log"
    policy = tmp_path / "policy.yaml"
    # A slow restart (6 s) that notes each run's attempt and idempotency key first.
    slow_restart = [
        sys.executable,
        "-c",
        f"import os, time; open({str(ledger)!r}, 'a').write(os.environ['AF_ATTEMPT'] + ' ' + "
        "os.environ['ANTIFRAGILE_IDEMPOTENCY_KEY'] + '\\n'); time.sleep(6)",
    ]
    policy.write_text(json.dumps({"recovery": {"commands": {"slow-restart": slow_restart}}}))
    env = stack_env(dev_server, redis_url, task_queue, ANTIFRAGILE_POLICY_FILE=str(policy))
    request = RecoveryRequest(
        service=f"slow-{task_queue}",
        probe=f"tcp://127.0.0.1:{listener.port}",
        action="command:slow-restart",
        strategy=RecoveryStrategy.IMMEDIATE,
    )
    try:
        worker = worker_process(env)
        handle = await start_recovery(temporal_client, request, task_queue=task_queue)

        async def action_running() -> bool:
            return ledger.exists() and len(ledger.read_text().splitlines()) >= 1

        await wait_for(action_running, timeout=60)
        worker.kill()
        worker_process(env)
        result: RecoveryResult = await asyncio.wait_for(handle.result(), RECOVERY_DEADLINE_S)
    finally:
        await listener.close()
    assert result.state is RecoveryState.SUCCEEDED, result.message
    assert [a.number for a in result.status.attempts] == [1]
    runs = ledger.read_text().splitlines()
    key = f"{handle.id}/{handle.result_run_id}/1"
    assert runs == [f"1 {key}", f"1 {key}"], "retried once, inside attempt 1, with its key"
    assert await workflow_task_failures(handle) == 0


class SlowHealth(http.server.BaseHTTPRequestHandler):
    """Answers 200 after ``delay_s``; counts the requests it received."""

    delay_s = 4.0
    requests: list[float] = []
    started = threading.Event()

    def do_GET(self) -> None:
        type(self).requests.append(1.0)
        type(self).started.set()
        threading.Event().wait(self.delay_s)
        try:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")
        except OSError:
            pass  # the prober died meanwhile

    def log_message(self, *args: object) -> None:
        pass


async def test_a_worker_killed_during_the_probe_retries_it_in_the_same_attempt(
    temporal_client: Client,
    dev_server: ServerProcess,
    redis_url: str,
    task_queue: str,
    worker_process: Callable[[dict[str, str]], WorkerProcess],
) -> None:
    handler = type("Handler", (SlowHealth,), {"requests": [], "started": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = stack_env(dev_server, redis_url, task_queue)
    request = RecoveryRequest(
        service=f"probe-{task_queue}",
        probe=f"http://127.0.0.1:{server.server_port}/health",
        probe_timeout_s=20,
        strategy=RecoveryStrategy.IMMEDIATE,
    )
    try:
        worker = worker_process(env)
        handle = await start_recovery(temporal_client, request, task_queue=task_queue)
        await asyncio.wait_for(asyncio.to_thread(handler.started.wait, 60), 65)
        worker.kill()
        worker_process(env)
        result: RecoveryResult = await asyncio.wait_for(handle.result(), RECOVERY_DEADLINE_S)
    finally:
        server.shutdown()
    assert result.state is RecoveryState.SUCCEEDED, result.message
    assert [(a.number, a.outcome) for a in result.status.attempts] == [(1, "healthy")]
    assert len(handler.requests) == 2, "the interrupted probe ran again, in attempt 1"
    assert await workflow_task_failures(handle) == 0
