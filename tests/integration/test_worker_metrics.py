"""The worker's Prometheus endpoints: workflow counts by state and the SDK's own metrics."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest

from antifragile.stack.processes import ServerProcess, free_port
from tests.helpers import run_cli, stack_env, wait_for

pytestmark = pytest.mark.integration


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return str(resp.read().decode())
    except (urllib.error.URLError, OSError):
        return ""


async def test_worker_exports_recoveries_by_state_and_temporal_sdk_metrics(
    dev_server: ServerProcess, redis_url: str, task_queue: str, worker_process
) -> None:
    ours, sdk = free_port(), free_port()
    env = stack_env(
        dev_server,
        redis_url,
        task_queue,
        ANTIFRAGILE_METRICS_PORT=str(ours),
        ANTIFRAGILE_TEMPORAL_METRICS_PORT=str(sdk),
    )
    worker_process(env)
    done = await run_cli(
        env,
        "recovery",
        "start",
        f"metrics-{task_queue}",
        "--probe",
        f"redis://{redis_url.split('//')[1]}",
        "--wait",
    )
    assert done.code == 0, done.stderr

    async def succeeded_count() -> float:
        text = await asyncio.to_thread(_scrape, ours)
        for line in text.splitlines():
            if line.startswith('antifragile_workflows{kind="recovery",state="SUCCEEDED"}'):
                return float(line.split()[-1])
        return 0.0

    assert await wait_for(succeeded_count, timeout=45, interval=0.5)
    sdk_text = await asyncio.to_thread(_scrape, sdk)
    assert "temporal_workflow_completed" in sdk_text or "workflow_completed" in sdk_text
