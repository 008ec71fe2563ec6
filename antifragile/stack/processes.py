"""Start and stop the real servers the dev stack and the tests use.

Each helper starts a child process on loopback, waits until it answers, and returns a
handle whose ``stop()`` leaves nothing behind. Tests and ``antifragile dev`` share them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from antifragile.constants import SEARCH_ATTRIBUTES
from antifragile.errors import AntifragileError
from antifragile.stack import binaries


class ProcessStartError(AntifragileError):
    """A server did not come up; the message says which and why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait_port(
    proc: subprocess.Popen[bytes], host: str, port: int, what: str, timeout: float, log: Path | None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = ""
            if log and log.exists():
                tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise ProcessStartError(f"{what} exited with code {proc.returncode}: {tail}")
        if port_open(host, port):
            return
        time.sleep(0.05)
    proc.kill()
    raise ProcessStartError(f"{what} did not listen on {host}:{port} within {timeout:.0f}s")


@dataclass
class ServerProcess:
    """A child server process started by this package."""

    name: str
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path | None = None
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the process group politely, then kill it; idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL the process group at once (crash tests)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def _spawn(argv: list[str], log_path: Path | None) -> subprocess.Popen[bytes]:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        # A new session: Ctrl-C in the terminal reaches the dev stack, which then stops
        # the children in order, instead of every child dying at once.
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]


def start_redis(
    port: int | None = None,
    *,
    data_dir: Path | None = None,
    log_path: Path | None = None,
    timeout: float = 10.0,
) -> ServerProcess:
    """Start a real ``redis-server`` on 127.0.0.1 (a free port unless given).

    Persistence is off unless ``data_dir`` is given (then an append-only file there).
    """
    port = port or free_port()
    argv = [
        binaries.redis_server(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--protected-mode",
        "no",
    ]
    if data_dir:
        data_dir.mkdir(parents=True, exist_ok=True)
        argv += ["--dir", str(data_dir), "--appendonly", "yes"]
    else:
        argv += ["--appendonly", "no"]
    proc = _spawn(argv, log_path)
    _wait_port(proc, "127.0.0.1", port, "redis-server", timeout, log_path)
    return ServerProcess("redis", proc, "127.0.0.1", port, log_path)


def temporal_dev_server_args(
    port: int, ui_port: int | None, db_file: Path | None, extra: list[str] | None = None
) -> list[str]:
    """Arguments of ``temporal server start-dev`` with our search attributes registered."""
    argv = [
        binaries.temporal_cli(),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warn",
    ]
    if ui_port:
        argv += ["--ui-port", str(ui_port)]
    else:
        argv += ["--headless"]
    if db_file:
        db_file.parent.mkdir(parents=True, exist_ok=True)
        argv += ["--db-filename", str(db_file)]
    for name, kind in SEARCH_ATTRIBUTES.items():
        argv += ["--search-attribute", f"{name}={kind}"]
    return argv + list(extra or [])


def _wait_frontend_healthy(
    proc: subprocess.Popen[bytes], port: int, timeout: float, log: Path | None
) -> None:
    """An open port is not a ready server: wait until the frontend reports SERVING."""
    deadline = time.monotonic() + timeout
    argv = [
        binaries.temporal_cli(),
        "operator",
        "cluster",
        "health",
        "--address",
        f"127.0.0.1:{port}",
    ]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        check = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        if check.returncode == 0 and "SERVING" in check.stdout:
            return
        time.sleep(0.05)
    _wait_port(proc, "127.0.0.1", port, "temporal dev server", 0.1, log)
    proc.kill()
    raise ProcessStartError(f"temporal dev server on port {port} never became healthy")


def start_temporal_dev_server(
    port: int | None = None,
    *,
    ui_port: int | None = None,
    db_file: Path | None = None,
    log_path: Path | None = None,
    extra_args: list[str] | None = None,
    timeout: float = 30.0,
) -> ServerProcess:
    """Start a real Temporal dev server (with UI if ``ui_port``) on 127.0.0.1."""
    port = port or free_port()
    argv = temporal_dev_server_args(port, ui_port, db_file, extra_args)
    proc = _spawn(argv, log_path)
    _wait_port(proc, "127.0.0.1", port, "temporal dev server", timeout, log_path)
    _wait_frontend_healthy(proc, port, timeout, log_path)
    server = ServerProcess("temporal", proc, "127.0.0.1", port, log_path)
    if ui_port:
        server.extra["ui_port"] = ui_port
    return server
