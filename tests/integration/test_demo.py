"""`antifragile demo` end to end: it starts its own stack and every step must happen."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from antifragile.demo.timeline import STEPS
from antifragile.stack.processes import free_port, port_open
from tests.helpers import run_cli

pytestmark = pytest.mark.integration


async def test_the_demo_tells_every_step_and_stops_the_stack_it_started(tmp_path: Path) -> None:
    port, ui_port, redis_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTIFRAGILE_")}
    result = await run_cli(
        env,
        "demo",
        "--port", str(port),
        "--ui-port", str(ui_port),
        "--redis-port", str(redis_port),
        "--data-dir", str(tmp_path / "stack"),
        "--chaos-duration", "5s",
        timeout=360,
    )  # fmt: skip
    assert result.code == 0, result.stdout + result.stderr
    out = result.stdout
    for _, title in STEPS:
        assert f"ok  {title}" in out
    assert f"demo passed: all {len(STEPS)} steps happened, in order" in out
    for workflow in (
        "chaos-agent-bus-redis-errors-",
        "recovery-agent-bus-redis",
        "recovery-agent-bus-replay",
    ):
        assert f"http://127.0.0.1:{ui_port}/namespaces/default/workflows/{workflow}" in out
    assert "0 missing, 0 duplicated, 0 dropped" in out
    # The last act: the same outage twice, side by side; the advice, learned from three
    # outages and a baseline harvested in 2 s windows, fails fewer calls and closes sooner.
    assert "The same 2 s outage of agent-bus-archive, twice" in out, out
    assert re.search(
        r"advises breaker.open_duration_s [\d.]+ \(now 30\), "
        r"breaker.failure_threshold [34] \(now 5\)",
        out,
    ), out
    for row in ("failure_threshold", "failed calls", "refused calls", "trial calls"):
        assert re.search(rf"{row}\s+│\s+\d+\s+│\s+\d+", out), (row, out)
    threshold = re.search(r"failure_threshold\s+│\s+(\d+)\s+│\s+(\d+)", out)
    assert threshold is not None and (int(threshold[1]), int(threshold[2])) in ((5, 3), (5, 4))
    failed = re.search(r"failed calls\s+│\s+(\d+)\s+│\s+(\d+)", out)
    assert failed is not None and int(failed[2]) < int(failed[1]), out
    closed = re.search(r"return → closed\s+│\s+([\d.]+) s\s+│\s+([\d.]+) s", out)
    assert closed is not None, out
    before, after = float(closed[1]), float(closed[2])
    assert after < before, (before, after)
    assert "intern refused" in out and "sre-oncall: applied, config version" in out, out
    assert "`antifragile advise history agent-bus-archive`" in out
    assert "the demo reverted the advice" in out
    # The experiment's HTML report, written under the data directory, its path printed.
    pages = list((tmp_path / "stack").glob("chaos-agent-bus-redis-errors-*.html"))
    assert len(pages) == 1 and f"report {pages[0]}" in out, out
    assert pages[0].read_text().count("<svg") == 5
    # Everything it started is stopped; its history stays for `antifragile dev`.
    assert not port_open("127.0.0.1", port) and not port_open("127.0.0.1", redis_port)
    assert (tmp_path / "stack" / "temporal.db").exists()


async def test_a_bad_demo_flag_is_one_line_and_exit_2() -> None:
    result = await run_cli(dict(os.environ), "demo", "--rate", "0")
    assert result.code == 2
    assert result.stderr.strip() == "error: --rate: must be 1..200000 messages/s, got 0"
