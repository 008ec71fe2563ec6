"""Every worker and Temporal SDK metric the Grafana dashboard queries is served.

A real worker process (``python -m workers``, as the compose ``worker`` service runs) with
both metrics ports, on the dev server, runs a recovery to the end; both endpoints are
scraped and the dashboard's queries compared with what they serve. The runtime's metrics
are checked against a real runtime in tests/unit/test_grafana_dashboard.py.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
from typing import Any

import pytest
from temporalio.client import Client

from antifragile.stack.processes import ServerProcess, free_port
from antifragile.testing import eventually
from tests.helpers import run_cli, stack_env
from tests.unit.test_grafana_dashboard import (
    DASHBOARD,
    dashboard_queries,
    problems,
    runtime_queries,
    scrape,
    served_series,
)

pytestmark = pytest.mark.integration


def _scrape_or_empty(port: int) -> str:
    try:
        return scrape(port)
    except (urllib.error.URLError, OSError):
        return ""


async def test_every_worker_and_sdk_metric_the_dashboard_queries_is_served(
    dev_server: ServerProcess,
    temporal_client: Client,
    redis_url: str,
    task_queue: str,
    worker_process: Any,
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
        f"grafana-{task_queue}",
        "--probe",
        f"redis://{redis_url.split('//')[1]}",
        "--wait",
    )
    assert done.code == 0, done.stderr

    succeeded = 'AfKind="recovery" AND AfState="SUCCEEDED"'

    async def counted() -> str:
        # The gauge counts the whole namespace (the dev server is shared by this process's
        # other test modules), from visibility, refreshed every 10 s: wait until it serves
        # the count visibility gives now, and that count includes this test's recovery.
        text = await asyncio.to_thread(_scrape_or_empty, ours)
        now = (await temporal_client.count_workflows(succeeded)).count
        ours_done = await temporal_client.count_workflows(
            f'{succeeded} AND WorkflowId="recovery-grafana-{task_queue}"'
        )
        assert ours_done.count == 1
        line = f'antifragile_workflows{{kind="recovery",state="SUCCEEDED"}} {float(now)}'
        assert line in text, f"{line!r} not served"
        return text

    worker_text = await eventually(counted, timeout=45, interval=0.5)
    sdk_text = await asyncio.to_thread(scrape, sdk)
    served = served_series(worker_text, sdk_text)
    assert served["antifragile_workflows"]["kind"] == {"recovery", "chaos"}
    assert task_queue in served["temporal_worker_start"]["task_queue"]

    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    runtime = {id(q) for q in runtime_queries(queries)}
    theirs = [q for q in queries if id(q) not in runtime]
    assert len(theirs) >= 10, [q.where for q in theirs]
    assert {m for q in theirs for m in q.metrics if m.startswith("temporal_")}
    assert problems(theirs, served) == []
