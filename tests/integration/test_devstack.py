"""``antifragile dev`` as a user runs it: up on chosen ports, usable, gone after Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from antifragile.stack import binaries
from antifragile.stack.processes import free_port, port_open
from tests.helpers import REPO

pytestmark = pytest.mark.integration


def _wait_line(proc: subprocess.Popen[str], needle: str, timeout: float = 60) -> str:
    seen = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"{needle!r} never printed; got: {''.join(seen)}")


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from antifragile.cli import main; main()", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_dev_stack_runs_on_chosen_ports_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    port, ui_port, redis_port = free_port(), free_port(), free_port()
    data = tmp_path / "stack"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTIFRAGILE_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from antifragile.cli import main; main()",
            "dev",
            "--port",
            str(port),
            "--ui-port",
            str(ui_port),
            "--redis-port",
            str(redis_port),
            "--data-dir",
            str(data),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        banner = _wait_line(proc, "Ctrl-C stops everything")
        assert f"http://127.0.0.1:{ui_port}" in banner
        assert f"127.0.0.1:{port}" in banner
        assert (data / "temporal.db").exists()
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/", timeout=10) as resp:
            assert resp.status == 200
        listed = subprocess.run(
            [
                binaries.temporal_cli(),
                "operator",
                "search-attribute",
                "list",
                "--address",
                f"127.0.0.1:{port}",
                "--output",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert {"AfKind", "AfService", "AfState", "AfPriority"} <= set(
            json.loads(listed.stdout)["customAttributes"]
        )

        # The stack is usable: recover a "service" whose probe is the stack's own Redis.
        user_env = dict(
            env,
            ANTIFRAGILE_TEMPORAL_ADDRESS=f"127.0.0.1:{port}",
            ANTIFRAGILE_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        )
        started = _run(
            user_env,
            "recovery",
            "start",
            "cache",
            "--probe",
            f"redis://127.0.0.1:{redis_port}/0",
            "--wait",
            "--json",
        )
        assert started.returncode == 0, started.stderr
        assert json.loads(started.stdout)["state"] == "SUCCEEDED"

        # A second stack on the default ports is untouched by ours and vice versa:
        clash = _run(
            env,
            "dev",
            "--port",
            str(port),
            "--ui-port",
            str(free_port()),
            "--redis-port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "b"),
        )
        assert clash.returncode == 2
        assert f"port {port}" in clash.stderr and "already in use" in clash.stderr
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0
    for p in (port, ui_port, redis_port):
        assert not port_open("127.0.0.1", p), f"port {p} still open after Ctrl-C"
    leftovers = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "processes left behind"


def _start_dev(tmp_path: Path) -> tuple[subprocess.Popen[str], dict[str, int], Path]:
    ports = {"port": free_port(), "ui_port": free_port(), "redis_port": free_port()}
    data = tmp_path / "stack"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTIFRAGILE_")}
    argv = [sys.executable, "-c", "from antifragile.cli import main; main()", "dev"]
    for flag, value in ports.items():
        argv += [f"--{flag.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(
        [*argv, "--data-dir", str(data)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return proc, ports, data


@pytest.mark.parametrize(
    ("name", "pattern"),
    # redis-server rewrites its command line to "redis-server 127.0.0.1:PORT".
    [("Redis", "redis-server 127.0.0.1:{redis_port}"), ("Temporal", "{data}/temporal.db")],
)
def test_dev_stack_stops_everything_with_exit_1_when_a_server_dies(
    tmp_path: Path, name: str, pattern: str
) -> None:
    proc, ports, data = _start_dev(tmp_path)
    try:
        banner = _wait_line(proc, "Ctrl-C stops everything")
        # A second stack's "Try" lines carry all three addresses, the UI's included.
        assert (
            f"  export ANTIFRAGILE_TEMPORAL_ADDRESS=127.0.0.1:{ports['port']} "
            f"ANTIFRAGILE_REDIS_URL=redis://127.0.0.1:{ports['redis_port']}/0 "
            f"ANTIFRAGILE_UI_URL=http://127.0.0.1:{ports['ui_port']}\n"
        ) in banner
        assert f"--probe demo-db=tcp://127.0.0.1:{ports['redis_port']}" in banner
        found = subprocess.run(
            ["pgrep", "-f", pattern.format(data=data, **ports)],
            capture_output=True,
            text=True,
        ).stdout.split()
        assert len(found) == 1, found
        os.kill(int(found[0]), signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 1, out
    assert out.count(f"{name} exited (code -9, SIGKILL)") == 1, out
    assert "Traceback" not in out and "WARN" not in out, out
    for p in ports.values():
        assert not port_open("127.0.0.1", p), f"port {p} still open"
    leftovers = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "processes left behind"
