"""Processes of the chaos integration tests: a worker and a demo service, each a real
subprocess pointed at the session's dev server and Redis by ``ANTIFRAGILE_*`` variables."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import antifragile.testing as af_testing
from antifragile.models.chaos_scenario import ChaosScenario

REPO = Path(__file__).resolve().parents[2]


class ChildProcess:
    """A Python child process with its own log file; killable, restartable."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv = argv
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [sys.executable, *self.argv],
                env=self.env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            out.close()

    def kill(self) -> None:
        """SIGKILL: no cleanup code of the child runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Demo(ChildProcess):
    """The demo service; ``status()`` reads its latest status file.

    ``extra`` flags follow the defaults (argparse: the last one wins), e.g. ``--meter``.
    """

    def __init__(
        self,
        env: dict[str, str],
        workdir: Path,
        targets: list[str],
        instance: str,
        extra: list[str] | None = None,
    ) -> None:
        self.status_file = workdir / f"{instance}.json"
        super().__init__(
            [
                "-m",
                "antifragile.demo.guarded_service",
                "--targets",
                ",".join(targets),
                "--instance-id",
                instance,
                "--status-file",
                str(self.status_file),
                "--timeout",
                "0.3",
                "--open-duration",
                "0.5",
                "--publish-interval",
                "0.3",
                "--report-interval",
                "0.1",
                *(extra or []),
            ],
            env,
            workdir / f"{instance}.log",
        )
        self.instance = instance

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.status_file.read_text()))

    def target(self, name: str) -> dict[str, Any]:
        return dict(self.status()["targets"][name])

    def counts(self, name: str) -> dict[str, int]:
        return dict(self.target(name)["counts"])


@dataclass
class Stack:
    """A worker and a demo service, as subprocesses, on their own task queue."""

    env: dict[str, str]
    queue: str
    worker: ChildProcess
    demo: Demo
    redis_url: str
    workdir: Path


@contextmanager
def chaos_stack(
    temporal_port: int,
    redis_port: int,
    workdir: Path,
    targets: list[str],
    *,
    lease_ttl_s: float,
    instance: str = "demo-1",
    extra_policy: str = "",
    unguarded: list[str] | None = None,
) -> Iterator[Stack]:
    """Start a worker (policy: only ``targets`` and ``unguarded``) and a demo service
    guarding ``targets`` (``unguarded`` targets are allowed but nobody guards them)."""
    policy = workdir / "policy.yaml"
    policy.write_text(
        "chaos:\n"
        f"  allowed_targets: [{', '.join([*targets, *(unguarded or [])])}]\n"
        "  max_duration_s: 60\n"
        f"  lease_ttl_s: {lease_ttl_s}\n" + extra_policy
    )
    queue = f"chaos-it-{uuid.uuid4().hex[:8]}"
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = dict(
        os.environ,
        ANTIFRAGILE_TEMPORAL_ADDRESS=f"127.0.0.1:{temporal_port}",
        ANTIFRAGILE_REDIS_URL=redis_url,
        ANTIFRAGILE_TASK_QUEUE=queue,
        ANTIFRAGILE_POLICY_FILE=str(policy),
        ANTIFRAGILE_LOG_LEVEL="WARNING",
    )
    worker = ChildProcess(["-m", "workers"], env, workdir / "worker.log")
    demo = Demo(env, workdir, targets, instance)
    worker.start()
    demo.start()
    try:
        yield Stack(env, queue, worker, demo, redis_url, workdir)
    finally:
        demo.stop()
        worker.stop()


async def eventually(
    check: Callable[[], Any], timeout: float = 10.0, what: str = "condition", interval: float = 0.05
) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; the demo's status
    page unreachable or half-written (OSError, ValueError, KeyError) means "not yet"."""
    return await af_testing.eventually(
        check, timeout, interval, retry_on=(OSError, ValueError, KeyError), what=what
    )


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Per-outcome difference between two counter readings (only what grew)."""
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) > before.get(k, 0)
    }


async def cli(env: dict[str, str], *args: str, timeout: float = 90) -> tuple[int, str, str]:
    """Run ``antifragile ARGS`` as a separate process: (exit code, stdout, stderr)."""
    proc = await cli_process(env, *args)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def cli_process(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    """Start ``antifragile ARGS`` in the background (``communicate()`` to end it)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from antifragile.cli import main; main()",
        *args,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def chaos_scenario(prefix: str, **kw: Any) -> ChaosScenario:
    """A short experiment (``target`` and the rest in ``kw``) watched at the call site.

    The health guard is off (``abort_below_health`` 0): the tests are about the fault.
    """
    base: dict[str, Any] = {
        "name": f"{prefix}-{uuid.uuid4().hex[:6]}",
        "duration_s": 3,
        "abort_below_health": 0.0,
        "recovery_timeout_s": 5,
    }
    base.update(kw)
    return ChaosScenario.model_validate(base)


def fault_cleared(demo: Demo, target: str) -> bool:
    """No fault enforced on ``target`` and its breaker closed."""
    t = demo.target(target)
    return t["fault"] is None and t["breaker"] == "CLOSED"
