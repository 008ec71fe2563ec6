"""Integration helpers: the worker and the CLI as real subprocesses against real servers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from antifragile.processes import ServerProcess

REPO = Path(__file__).resolve().parents[2]


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


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], WorkerProcess]]:
    """Start workers as subprocesses; all are stopped at the end of the test."""
    started: list[WorkerProcess] = []

    def _start(env: dict[str, str]) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "workers"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        worker = WorkerProcess(proc, log)
        started.append(worker)
        return worker

    yield _start
    for worker in started:
        worker.stop()


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
