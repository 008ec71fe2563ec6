"""The CLI imports only what the command given uses (start-up time is a measured bound).

``antifragile --help`` imports neither temporalio, redis nor any command module;
``chaos stop --all`` writes the halt switch before temporalio is imported (issue 12: the
halt's bound starts when the command is launched). Each check runs in a fresh interpreter,
since ``sys.modules`` of the test process has everything imported already.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from antifragile.cli import LAZY_COMMANDS, load_command

REPO = Path(__file__).resolve().parents[2]
HEAVY = (
    "temporalio",
    "redis",
    "antifragile.cli.chaos",
    "antifragile.cli.recovery",
    "antifragile.cli.health",
    "antifragile.chaos",
    "antifragile.models",
)
"""Modules ``antifragile --help`` must not import."""

_RUN_APP = """
import json, sys
from antifragile.cli import app
try:
    app(sys.argv[1:], prog_name="antifragile", standalone_mode=False)
except BaseException as exc:  # the command's own failure is not what is tested here
    print(type(exc).__name__, file=sys.stderr)
print("MODULES=" + json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTIFRAGILE_")}
    env.update(
        ANTIFRAGILE_TEMPORAL_ADDRESS="127.0.0.1:1",  # nothing listens: fails fast
        ANTIFRAGILE_REDIS_URL="redis://127.0.0.1:1/0",
        COLUMNS="120",
    )
    env.update(extra)
    return env


def _modules_after(*args: str) -> tuple[str, set[str]]:
    """Run ``antifragile ARGS`` in a fresh interpreter: its stdout and imported modules."""
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_APP, *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next(x for x in proc.stderr.splitlines() if x.startswith("MODULES="))
    return proc.stdout, set(json.loads(line.removeprefix("MODULES=")))


def _heavy(modules: set[str], roots: tuple[str, ...] = HEAVY) -> list[str]:
    return sorted(m for m in modules if any(m == r or m.startswith(r + ".") for r in roots))


def test_help_imports_no_command_module() -> None:
    out, modules = _modules_after("--help")
    assert _heavy(modules) == []
    for name in ("health", "worker", "setup", "dev", "demo", "recovery", "chaos"):
        assert f" {name} " in out, out


def test_a_listing_help_is_the_command_own() -> None:
    # The root's listing shows stored texts; they must stay those of the commands.
    for name, (_, _, shown) in LAZY_COMMANDS.items():
        real = inspect.cleandoc(load_command(name).help or "").split("\n\n")[0]
        assert shown == " ".join(real.split()), name


def test_recovery_command_skips_chaos_and_redis() -> None:
    _, modules = _modules_after("recovery", "status", "X")
    assert "temporalio.client" in modules  # the command ran as far as connecting
    assert _heavy(modules, ("antifragile.cli.chaos", "antifragile.cli.health", "redis")) == []
    # Start-up budget (issue 15: <= 0.6 s, bench/cli.py): what `recovery status` needs is
    # pydantic models, rich and temporalio.client; nothing that reads files or other servers.
    needless = (
        "yaml",
        "httpx",
        "aiohttp",
        "antifragile.policy",
        "antifragile.fleet_health",
        "antifragile.inprocess",
        "antifragile.telemetry_otel",
        "opentelemetry",
        "prometheus_client",
        "workers",
    )
    assert _heavy(modules, needless) == []


def test_chaos_help_skips_temporalio() -> None:
    out, modules = _modules_after("chaos", "stop", "--help")
    assert "--all" in out
    assert _heavy(modules, ("temporalio", "antifragile.cli.recovery")) == []


_STOP_ALL = """
import sys
from antifragile.chaos.plane import FaultPlane

written = FaultPlane.set_halt

async def spy(self, *args, **kwargs):
    result = await written(self, *args, **kwargs)
    print(f"temporalio imported when the halt was written: {'temporalio' in sys.modules}",
          file=sys.stderr, flush=True)
    return result

FaultPlane.set_halt = spy
from antifragile.cli import main
main(["chaos", "stop", "--all", "--reason", "lazy test", "--timeout", "1s"])
"""


@pytest.mark.asyncio
async def test_stop_all_writes_the_halt_before_importing_temporalio(redis_url: str) -> None:
    from antifragile.chaos.plane import FaultPlane

    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _STOP_ALL],
        cwd=REPO,
        env=_env(ANTIFRAGILE_REDIS_URL=redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Temporal is unreachable: a partial stop (exit 1) that still set the halt switch.
    assert proc.returncode == 1, proc.stderr
    assert "halt switch set" in proc.stdout
    assert "cannot reach Temporal at 127.0.0.1:1" in proc.stderr
    assert "temporalio imported when the halt was written: False" in proc.stderr
    plane = FaultPlane.from_url(redis_url)
    try:
        halt = await plane.halt_status()
        assert halt.halted and halt.reason == "lazy test"
        await plane.clear_halt()
    finally:
        await plane.close()
