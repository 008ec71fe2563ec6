"""The report counts what the call site saw (issue 12, item 12), end to end: a guarded demo
service, Redis, a dev server and a worker, each a real process; the report read from the
workflow's result and printed by ``antifragile chaos report``.

- A CIRCUIT_BREAKER drill: every call the forced-open breaker refused is an affected call
  (it printed ``calls affected -`` while the service saw ~185 refusals/s).
- An ERROR experiment that opens the breaker several times: every opening is counted (a
  breaker that opened six times was listed once).
- A LATENCY experiment under which health never dropped: no time to recover.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from temporalio.client import Client

from antifragile.chaos.client import start_experiment
from antifragile.constants import REDIS_HALT_KEY
from antifragile.models.chaos import ChaosOutcome, ChaosReport
from antifragile.stack.processes import ServerProcess
from tests.integration.chaos_support import (
    Stack,
    chaos_scenario,
    chaos_stack,
    cli,
    delta,
    eventually,
    fault_cleared,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DB = "counts-db"
INSTANCE = "counts-1"
OPENED = f"{INSTANCE}/{DB}: OPEN"
FORCED = f"{INSTANCE}/{DB}: FORCED_OPEN"


@pytest.fixture(scope="module")
def stack(
    dev_server: ServerProcess, redis_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with chaos_stack(
        dev_server.port,
        redis_server.port,
        tmp_path_factory.mktemp("chaos-counts"),
        [DB],
        lease_ttl_s=2.0,
        instance=INSTANCE,
    ) as started:
        yield started


@pytest.fixture
async def ready(stack: Stack) -> Stack:
    """The demo calls ``DB`` through a closed breaker, follows the plane, no halt is set."""
    client = aioredis.from_url(stack.redis_url)
    await client.delete(REDIS_HALT_KEY)
    await client.aclose()
    await eventually(
        lambda: stack.demo.status()["plane_connected"] and not stack.demo.status()["halted"],
        timeout=20,
        what="demo service up",
    )
    await eventually(lambda: fault_cleared(stack.demo, DB), timeout=10, what="clean start")
    return stack


async def run(ready: Stack, client: Client, **kw: Any) -> tuple[ChaosReport, dict[str, int]]:
    """Run one experiment on ``DB``; its report, and the outcomes the demo counted meanwhile
    (up to the moment the fault was gone and the breaker closed again)."""
    before = ready.demo.counts(DB)
    handle = await start_experiment(
        client, chaos_scenario("counts", target=DB, **kw), task_queue=ready.queue
    )
    report = await handle.result()
    assert report.outcome is ChaosOutcome.COMPLETED, report.reason
    await eventually(lambda: fault_cleared(ready.demo, DB), timeout=10, what="fault gone")
    return report, delta(before, ready.demo.counts(DB))


async def printed(ready: Stack, experiment_id: str) -> str:
    """``antifragile chaos report ID`` as a user sees it (wide, so no row wraps)."""
    code, out, err = await cli({**ready.env, "COLUMNS": "250"}, "chaos", "report", experiment_id)
    assert code == 0 and "Traceback" not in err, err
    return out


def row(out: str, label: str) -> str:
    """The value of the report's head row ``label`` (label, spaces, value)."""
    for line in out.splitlines():
        found = re.match(rf"{re.escape(label)}\s{{2,}}(.*)$", line.rstrip())
        if found:
            return found.group(1)
    raise AssertionError(f"no row {label!r} in:\n{out}")


async def test_a_breaker_drill_counts_every_refused_call_as_affected(
    ready: Stack, temporal_client: Client
) -> None:
    report, grew = await run(ready, temporal_client, chaos_type="CIRCUIT_BREAKER", duration_s=3)
    refused = grew.get("CircuitOpenError", 0)
    assert refused > 50, grew  # four callers every 20 ms for 3 s, all refused
    # Refusals happen only while the fault is installed (it forces the breaker open on
    # install and resets it on removal), so the call site's count is exact.
    assert report.calls_affected == {INSTANCE: refused}, (report.calls_affected, grew)
    assert report.calls_refused == {INSTANCE: refused}
    assert report.calls_seen == {INSTANCE: refused}
    assert report.breaker_openings == {FORCED: 1}
    assert report.breakers_opened == [FORCED]
    assert report.instances_saw_fault == 1
    out = await printed(ready, report.experiment_id)
    assert row(out, "calls affected") == f"{INSTANCE}: {refused}"
    assert row(out, "calls refused").startswith(f"{INSTANCE}: {refused}")
    assert row(out, "breakers opened") == FORCED


async def test_an_error_experiment_counts_every_opening_of_the_breaker(
    ready: Stack, temporal_client: Client
) -> None:
    # Errors on every call: the breaker opens after 5 failures, then every 0.5 s (the
    # demo's open duration) its one trial call fails and it opens again.
    report, grew = await run(
        ready, temporal_client, chaos_type="ERROR", error_rate=1.0, duration_s=4
    )
    injected = grew.get("RuntimeError", 0)
    refused = report.calls_refused.get(INSTANCE, 0)
    openings = report.breaker_openings.get(OPENED, 0)
    assert injected > 0 and refused > 0, (grew, report.calls_refused)
    assert openings >= 3, report.breaker_openings
    # At most one opening per open duration (0.5 s) while the fault applied, plus the first.
    assert report.fault_active_s is not None
    assert openings <= report.fault_active_s / 0.5 + 1, (openings, report.fault_active_s)
    # Every call under the fault was affected: an injected error, or refused by the
    # breaker the errors opened. The refusals the demo saw include those after removal
    # (the breaker stays open until its next trial), which the fault does not count.
    assert report.calls_affected == {INSTANCE: injected + refused}
    assert report.calls_seen == report.calls_affected
    assert refused <= grew.get("CircuitOpenError", 0)
    assert report.breakers_opened == [OPENED]
    out = await printed(ready, report.experiment_id)
    assert row(out, "breakers opened") == f"{OPENED} x{openings}"
    assert row(out, "calls affected") == f"{INSTANCE}: {injected + refused}"


async def test_time_to_recover_only_when_health_dropped(
    ready: Stack, temporal_client: Client
) -> None:
    # 5 ms of latency under a 300 ms guard timeout: nothing fails, no breaker opens, so
    # health never leaves its steady state and there is nothing to recover from.
    report, grew = await run(
        ready, temporal_client, chaos_type="LATENCY", latency_ms=5, duration_s=2
    )
    assert set(grew) == {"ok"}, grew
    assert report.calls_affected.get(INSTANCE, 0) > 0
    assert report.health_dropped is False
    assert report.time_to_recover_s is None and report.recovered is True
    assert report.breaker_openings == {} and report.calls_refused == {}
    out = await printed(ready, report.experiment_id)
    assert row(out, "time to recover") == "- (health never dropped)"
    assert row(out, "breakers opened") == "-"
