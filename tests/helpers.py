"""Test helpers: the worker and the CLI as real subprocesses, a TCP service, polling."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from antifragile.stack.processes import ServerProcess, free_port
from antifragile.testing import eventually

if TYPE_CHECKING:
    from temporalio.testing import WorkflowEnvironment

REPO = Path(__file__).resolve().parents[1]


def stack_env(
    dev_server: ServerProcess, redis_url: str, task_queue: str, **extra: str
) -> dict[str, str]:
    """Environment pointing a subprocess at the test's servers and task queue."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTIFRAGILE_")}
    env.update(
        {
            "ANTIFRAGILE_TEMPORAL_ADDRESS": f"127.0.0.1:{dev_server.port}",
            "ANTIFRAGILE_REDIS_URL": redis_url,
            "ANTIFRAGILE_TASK_QUEUE": task_queue,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@dataclass
class WorkerProcess:
    """``python -m workers`` as a child process (so a test can SIGKILL it)."""

    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait for a clean exit."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class CliResult:
    """What a CLI invocation printed and returned."""

    code: int
    stdout: str
    stderr: str


async def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> CliResult:
    """Run ``antifragile ARGS`` as a subprocess, without blocking the event loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from antifragile.cli import main; main()",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


async def run_cli_batch(
    env: dict[str, str], commands: list[list[str]], timeout: float = 120
) -> list[CliResult]:
    """Run many ``antifragile`` command lines, each in its own process (see tests.cli_batch).

    One Python process imports the CLI once and forks a child per command, so a long list
    of bad-input cases costs milliseconds each instead of a full interpreter start.
    """
    import json

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.cli_batch",
        cwd=REPO,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(commands).encode()), timeout)
    assert proc.returncode == 0, err.decode()
    return [CliResult(r["code"], r["stdout"], r["stderr"]) for r in json.loads(out)]


async def wait_for(
    predicate: Callable[[], Awaitable[object]], timeout: float = 30.0, interval: float = 0.1
) -> object:
    """Poll ``predicate`` until it returns something truthy (:func:`eventually`).

    A workflow that does not exist yet (NOT_FOUND) counts as "not yet": requests that go
    through the orchestrator start their recovery a moment later.
    """

    async def check() -> object:
        try:
            return await predicate()
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            return None

    return await eventually(check, timeout, interval)


async def workflow_task_failures(handle: WorkflowHandle[Any, Any]) -> int:
    """How many workflow tasks of ``handle``'s run failed (a stuck workflow retries them)."""
    history = await handle.fetch_history()
    return sum(
        1 for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    )


class Listener:
    """A TCP service on a free port that is down until the test opens it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: asyncio.Server | None = None

    async def open(self) -> None:
        """Start accepting connections (the service "comes back")."""

        async def _accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        self.server = await asyncio.start_server(_accept, "127.0.0.1", self.port)

    async def close(self) -> None:
        """Stop accepting connections."""
        if self.server:
            self.server.close()
            await self.server.wait_closed()


async def temporal_signal(
    address: str, workflow_id: str, name: str, payload: str
) -> tuple[int, str]:
    """``temporal workflow signal --input PAYLOAD``, the real CLI as an operator runs it.

    Returns:
        (exit code, stderr)
    """
    from antifragile.stack import binaries

    proc = await asyncio.create_subprocess_exec(
        binaries.temporal_cli(),
        "workflow",
        "signal",
        "--address",
        address,
        "--workflow-id",
        workflow_id,
        "--name",
        name,
        "--input",
        payload,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def client_of_its_own(client: Client) -> Client:
    """A client on the same connection, as another process would have: the recovery
    client batches fire-and-forget requests per client, so each of these sends its own."""
    return Client(
        client.service_client, namespace=client.namespace, data_converter=client.data_converter
    )


@asynccontextmanager
async def time_skipping_server() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server with our custom search attributes registered.

    The test server knows no custom search attributes: upserting an unknown one fails every
    workflow task, so they are registered before any workflow runs. Modules that skip long
    spans take a server of their own: a workflow another module left waiting on an activity
    no worker serves keeps a shared server from skipping time.
    """
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    from antifragile.stack import binaries
    from antifragile.temporal_client import ensure_search_attributes

    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binaries.temporal_test_server(),
        data_converter=pydantic_data_converter,
    )
    try:
        await ensure_search_attributes(environment.client)
        yield environment
    finally:
        await environment.shutdown()
