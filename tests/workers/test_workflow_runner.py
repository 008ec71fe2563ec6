"""The worker's sandbox: third-party finalizers that import must not run sandboxed imports.

redis-py's asyncio ``ConnectionPool.__del__`` imports a module. When the garbage collector
runs it on a workflow thread, inside the sandbox, a sandbox that does not pass redis
through re-imports redis and OpenTelemetry there and hits a restricted ``os.environ`` read.
"""

from __future__ import annotations

import gc
import logging
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from tests.workers.gc_workflow import CollectGarbageWorkflow
from workers.main import workflow_runner


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    """Only the workflow's explicit collection may free the garbage (not the test thread)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def leave_pool_garbage() -> None:
    """An unreachable pool that holds an idle connection: only the cyclic GC frees it."""
    pool = aioredis.ConnectionPool(host="127.0.0.1", port=9)
    pool._available_connections.append(pool.make_connection())  # never connected
    pool.cycle = pool  # type: ignore[attr-defined]


async def collect_inside_a_workflow(env: WorkflowEnvironment, runner: WorkflowRunner) -> None:
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client, task_queue=queue, workflows=[CollectGarbageWorkflow], workflow_runner=runner
    ):
        leave_pool_garbage()
        found = await env.client.execute_workflow(
            CollectGarbageWorkflow.run, id=f"gc-{uuid.uuid4().hex[:8]}", task_queue=queue
        )
    assert found > 0


@pytest.mark.usefixtures("no_automatic_gc")
async def test_a_redis_pool_finalized_in_a_workflow_thread_stays_outside_the_sandbox(
    time_skipping_env: WorkflowEnvironment, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="temporalio.worker.workflow_sandbox")
    for runner in (workflow_runner(), workflow_runner(strict=True)):
        await collect_inside_a_workflow(time_skipping_env, runner)
    assert "restricted" not in caplog.text


@pytest.mark.usefixtures("no_automatic_gc")
async def test_the_default_sandbox_would_import_redis_inside_the_workflow(
    time_skipping_env: WorkflowEnvironment, caplog: pytest.LogCaptureFixture
) -> None:
    # The hazard the worker's runner removes, shown with the SDK's default sandbox.
    caplog.set_level(logging.WARNING, logger="temporalio.worker.workflow_sandbox")
    await collect_inside_a_workflow(time_skipping_env, SandboxedWorkflowRunner())
    assert "get on os.environ restricted" in caplog.text
