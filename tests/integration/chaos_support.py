"""Processes of the chaos integration tests: a worker and a demo service, each a real
subprocess pointed at the session's dev server and Redis by ``ANTIFRAGILE_*`` variables."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
                "antifragile.demo_service",
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


async def eventually(
    check: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Poll ``check`` (sync) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except (OSError, ValueError, KeyError) as exc:
            last_exc = exc
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s ({last_exc})")
        await asyncio.sleep(0.05)


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Per-outcome difference between two counter readings (only what grew)."""
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) > before.get(k, 0)
    }


async def cli(env: dict[str, str], *args: str, timeout: float = 90) -> tuple[int, str, str]:
    """Run ``antifragile ARGS`` as a separate process: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from antifragile.cli import main; main()",
        *args,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()
