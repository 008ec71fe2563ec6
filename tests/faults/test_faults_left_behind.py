"""Faults left behind, counted (a few trials of ``bench/faults.py``, with a short lease).

Real processes: the session's dev server and Redis, a worker (``python -m workers``) and
three guarded processes each calling one target in a loop. An ERROR experiment runs; then

- the worker is SIGKILLed (at a random point of the renewal cycle): no call site may see
  the fault later than the kill + lease TTL + 1 s, the lease key is gone from Redis, and
  a new worker ends the experiment with a report;
- separately, the CLI process that started the experiment and follows it (``chaos start
  --wait``) is SIGKILLed: the experiment runs to its end, and no call site sees the fault
  later than 1 s after the lease was removed.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import Client

from antifragile.chaos.plane import FaultPlane
from antifragile.stack.processes import ServerProcess
from bench._chaos_stack import ChaosStack, chaos_stack
from bench.faults import starter_kill_trial, worker_kill_trial

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

LEASE_TTL_S = 2.0
"""Short, so a trial takes seconds; renewals come every third of it."""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(
    dev_server: ServerProcess, redis_server: ServerProcess, tmp_path_factory: Any
) -> AsyncIterator[ChaosStack]:
    async with chaos_stack(
        3,
        tmp_path_factory.mktemp("faults-left-behind"),
        lease_ttl_s=LEASE_TTL_S,
        temporal_address=f"127.0.0.1:{dev_server.port}",
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
    ) as started:
        plane = FaultPlane.from_url(started.redis_url)
        await plane.clear_halt()  # another module's halt must not end these experiments
        await plane.close()
        yield started


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_sigkilled_worker_leaves_no_fault_past_its_lease_ttl(
    stack: ChaosStack, temporal_client: Client, seed: int
) -> None:
    trial = await worker_kill_trial(stack, temporal_client, LEASE_TTL_S, random.Random(seed))
    assert trial.left_behind == [] and not trial.lease_key_left, trial
    assert trial.outlived_s <= 1.0, trial
    assert trial.outcome in ("STOPPED", "COMPLETED", "FAILED"), trial  # it ended, reported


async def test_a_sigkilled_starter_leaves_no_fault_past_the_lease_removal(
    stack: ChaosStack, temporal_client: Client
) -> None:
    trial = await starter_kill_trial(stack, temporal_client, duration_s=3)
    assert trial.left_behind == [] and not trial.lease_key_left, trial
    assert trial.outcome == "COMPLETED", trial
