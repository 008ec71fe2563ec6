"""`antifragile demo` end to end: it starts its own stack and every step must happen."""

from __future__ import annotations

import os
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
        timeout=240,
    )  # fmt: skip
    assert result.code == 0, result.stdout + result.stderr
    out = result.stdout
    for _, title in STEPS:
        assert f"ok  {title}" in out
    assert "demo passed: all 18 steps happened, in order" in out
    for workflow in (
        "chaos-agent-bus-redis-errors-",
        "recovery-agent-bus-redis",
        "recovery-agent-bus-replay",
    ):
        assert f"http://127.0.0.1:{ui_port}/namespaces/default/workflows/{workflow}" in out
    assert "0 missing, 0 duplicated, 0 dropped" in out
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
