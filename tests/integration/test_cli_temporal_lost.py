"""Temporal killed while a chaos command follows an experiment: the line of a fresh command.

``recovery start --wait`` has its own test (``test_cli_recovery_wait``); this one covers the
generic path of ``run_command``: any command whose Temporal goes away mid-way ends with
``error: cannot reach Temporal at …`` and exit 2, and no SDK log line reaches the terminal.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from antifragile.stack.processes import start_temporal_dev_server
from tests.helpers import REPO, run_cli, stack_env
from tests.integration.test_cli_recovery_wait import read_until

pytestmark = pytest.mark.integration


async def test_temporal_dying_while_chaos_start_waits_is_one_line_exit_2(
    tmp_path: Path, redis_url: str, task_queue: str
) -> None:
    # A server of its own and no worker: the experiment never moves, the CLI follows it.
    server = start_temporal_dev_server(
        db_file=tmp_path / "temporal.db", log_path=tmp_path / "server.log"
    )
    env = stack_env(server, redis_url, task_queue)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from antifragile.cli import main; main()",
            "chaos",
            "start",
            "--type",
            "latency",
            "--target",
            f"lost-{task_queue}",
            "--duration",
            "30s",
            "--wait",
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        assert proc.stderr is not None and proc.stdout is not None
        seen = await read_until(proc.stderr, "following chaos-latency-lost-")
        server.proc.kill()
        rest = (await asyncio.wait_for(proc.stderr.read(), 120)).decode()
        out = (await proc.stdout.read()).decode()
        code = await proc.wait()
        fresh = await run_cli(env, "chaos", "list")
    finally:
        server.stop()
    assert "following" in seen
    assert out == "", out[-500:]
    assert "WARN" not in rest and "Traceback" not in rest, rest[-2000:]
    lines = rest.strip().splitlines()
    assert lines[-1].startswith(f"error: cannot reach Temporal at 127.0.0.1:{server.port} "), rest
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], rest
    assert code == fresh.code == 2, (code, rest, fresh.stderr)
    assert fresh.stderr.startswith(f"error: cannot reach Temporal at 127.0.0.1:{server.port} ")
