"""Shared fixtures: real servers started by the tests on free ports, and workers on fresh queues.

- ``time_skipping_env``: the time-skipping test server (timer-heavy workflow tests).
- ``dev_server`` / ``temporal_client``: a real ``temporal server start-dev`` (integration).
- ``redis_server`` / ``redis_url``: a real redis-server on a free port.
- ``start_worker``: a worker for every workflow and activity on a fresh task queue.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from antifragile.policy import WorkerPolicy
from antifragile.settings import Settings
from antifragile.stack.processes import ServerProcess, start_redis, start_temporal_dev_server
from tests.helpers import REPO, WorkerProcess, time_skipping_server
from workers.main import build_worker


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Repeat a failure's chain of causes after its traceback, one line each: CI logs keep
    only the end of a long traceback, and the root cause is printed first."""
    report = yield
    error = call.excinfo.value if call.excinfo else None
    chain: list[str] = []
    while error is not None and len(chain) < 10:
        chain.append(f"{type(error).__module__}.{type(error).__qualname__}: {error}")
        error = error.__cause__ or error.__context__
    if len(chain) > 1:
        report.sections.append(("causes, outermost first", "\n".join(chain)))
    return report


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server, with our custom search attributes registered."""
    async with time_skipping_server() as env:
        yield env


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real Temporal dev server (headless, SQLite file) on a free port."""
    data = tmp_path_factory.mktemp("temporal")
    server = start_temporal_dev_server(db_file=data / "temporal.db", log_path=data / "server.log")
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal_client(dev_server: ServerProcess) -> Client:
    """A client of the session's dev server, with the pydantic data converter."""
    return await Client.connect(
        f"127.0.0.1:{dev_server.port}", data_converter=pydantic_data_converter
    )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real redis-server on a free port, shared by the session."""
    server = start_redis(log_path=tmp_path_factory.mktemp("redis") / "redis.log")
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: ServerProcess) -> str:
    """URL of the session's Redis."""
    return f"redis://127.0.0.1:{redis_server.port}/0"


@pytest.fixture
def task_queue() -> str:
    """A fresh task queue name, so workers of different tests never share tasks."""
    return f"tq-{uuid.uuid4().hex[:10]}"


WorkerFactory = Callable[..., AbstractAsyncContextManager[Worker]]


@pytest.fixture
def start_worker(tmp_path: Path) -> WorkerFactory:
    """Start the real antifragile worker (all workflows and activities) for a test.

    Usage: ``async with start_worker(client, task_queue, policy=..., settings=...):``.
    """

    @asynccontextmanager
    async def _start(
        client: Client,
        task_queue: str,
        *,
        policy: WorkerPolicy | None = None,
        settings: Settings | None = None,
    ) -> AsyncIterator[Worker]:
        settings = (settings or Settings()).model_copy(update={"task_queue": task_queue})
        worker = build_worker(client, settings, policy or WorkerPolicy())
        async with worker:
            yield worker

    return _start


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
