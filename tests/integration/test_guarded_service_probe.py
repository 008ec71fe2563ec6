"""The walkthrough's demo service with ``--probe``: a breaker opening starts a real recovery."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import pytest
from temporalio.client import Client

from antifragile.constants import orchestrator_workflow_id, recovery_workflow_id
from antifragile.models.recovery import RecoveryStatus
from antifragile.stack.processes import ServerProcess
from tests.helpers import REPO, Listener, stack_env, wait_for

pytestmark = pytest.mark.integration


async def test_a_breaker_opening_starts_a_recovery_that_probes_the_given_url(
    temporal_client: Client,
    dev_server: ServerProcess,
    redis_url: str,
    task_queue: str,
    start_worker,
) -> None:
    listener = Listener()
    await listener.open()
    target = f"db-{task_queue}"
    probe = f"tcp://127.0.0.1:{listener.port}"
    env = stack_env(dev_server, redis_url, task_queue)
    async with start_worker(temporal_client, task_queue):
        # Every call outlives its 0.1 ms timeout (the call sleeps 1 ms): the breaker opens.
        service = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "antifragile.demo.guarded_service",
            "--targets",
            target,
            "--probe",
            f"{target}={probe}",
            "--timeout",
            "0.0001",
            "--open-duration",
            "30",
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        handle = temporal_client.get_workflow_handle(recovery_workflow_id(target))
        try:

            async def recovery() -> RecoveryStatus:
                return await handle.query("status", result_type=RecoveryStatus)

            status = await wait_for(recovery, timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                service.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(service.communicate(), 30)
            for left in (
                handle,
                temporal_client.get_workflow_handle(orchestrator_workflow_id(task_queue)),
            ):
                with contextlib.suppress(Exception):
                    await left.terminate("test over")
            await listener.close()
    assert isinstance(status, RecoveryStatus)
    assert status.service == target and status.probe == probe
    assert b"no recovery configured" not in err, err.decode()[-2000:]


def test_a_probe_for_a_target_not_guarded_is_refused_naming_the_flag() -> None:
    import subprocess

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "antifragile.demo.guarded_service",
            "--targets",
            "db",
            "--probe",
            "cache=tcp://127.0.0.1:6379",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--probe: target 'cache' is not one of --targets (db)" in done.stderr
