"""A worker SIGKILLed while an experiment cleans up (issue 12, item 1), on a dev server.

Redis dies while the fault runs, so the experiment's cleanup lasts (the removal cannot be
confirmed until Redis answers again); the worker is SIGKILLed in the middle of it. A new
worker, started once Redis is back, must replay the shielded ending and finish it: the
removal confirmed, one complete report, no workflow task failed, and no fault at the call
site past its lease TTL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from antifragile.chaos.client import start_experiment
from antifragile.chaos.plane import fault_key
from antifragile.models.chaos import ChaosPhase, ChaosReport, ChaosStatus
from antifragile.stack.processes import ServerProcess, start_redis
from tests.helpers import workflow_task_failures
from tests.integration.chaos_support import chaos_scenario, chaos_stack, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DB = "killclean-db"
LEASE_TTL_S = 5.0


class OwnRedis:
    """A redis-server of this test's own, to kill and bring back on the same port."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.servers: list[ServerProcess] = [start_redis(log_path=log)]
        self.port = self.servers[0].port

    def kill(self) -> None:
        self.servers[-1].kill()

    def restart(self) -> None:
        self.servers.append(start_redis(self.port, log_path=self.log))

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    redis = OwnRedis(tmp_path / "redis.log")
    yield redis
    redis.stop()


async def _phase(handle: WorkflowHandle[Any, Any]) -> ChaosPhase:
    status: ChaosStatus = await handle.query("status", result_type=ChaosStatus)
    return status.phase


async def test_a_worker_sigkilled_during_cleanup_is_replaced_and_the_ending_completes(
    dev_server: ServerProcess, temporal_client: Client, own_redis: OwnRedis, tmp_path: Path
) -> None:
    with chaos_stack(
        dev_server.port, own_redis.port, tmp_path, [DB], lease_ttl_s=LEASE_TTL_S
    ) as stack:
        await eventually(lambda: stack.demo.status()["plane_connected"], timeout=30, what="demo up")
        sc = chaos_scenario("kc", target=DB, chaos_type="LATENCY", latency_ms=50, duration_s=60)
        handle = await start_experiment(temporal_client, sc, task_queue=stack.queue)
        await eventually(
            lambda: stack.demo.target(DB)["fault"] == handle.id, timeout=30, what="fault on"
        )
        own_redis.kill()
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        deadline = killed_at + 60
        while (phase := await _phase(handle)) is not ChaosPhase.CLEANING_UP:
            assert loop.time() < deadline, f"never cleaning up (phase {phase})"
            await asyncio.sleep(0.1)
        stack.worker.kill()  # SIGKILL in the middle of the cleanup
        # No worker, no Redis: every process still drops the fault by its lease TTL.
        await eventually(
            lambda: stack.demo.target(DB)["fault"] is None,
            timeout=LEASE_TTL_S + 5,
            what="fault dropped at the call site",
        )
        assert loop.time() - killed_at <= LEASE_TTL_S + 3
        own_redis.restart()
        stack.worker.start()
        report: ChaosReport = await asyncio.wait_for(handle.result(), 180)
    assert (await handle.describe()).status is WorkflowExecutionStatus.COMPLETED
    assert await workflow_task_failures(handle) == 0
    assert report.outcome is not None and report.reason, report
    phases = [p.phase for p in report.phases]
    assert phases[-3:-1] == [ChaosPhase.CLEANING_UP, ChaosPhase.VERIFYING_RECOVERY], phases
    assert report.cleanup.attempted and report.cleanup.confirmed is True, report.cleanup
    assert not report.cleanup.lease_removed  # it ran out with its TTL; nobody removed it
    assert report.fault_active_s is not None and report.fault_active_s <= LEASE_TTL_S + 3
    assert sum("fault injected" in e.message for e in report.events) == 1
    redis = aioredis.from_url(f"redis://127.0.0.1:{own_redis.port}/0")
    try:
        assert await redis.exists(fault_key(handle.id)) == 0
    finally:
        await redis.aclose()
