"""Probes against real loopback servers: TCP, HTTP and Redis."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from antifragile.recovery.probes import probe, run_command
from antifragile.stack.processes import ServerProcess, free_port


@pytest.fixture
def http_server() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ok" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


async def test_tcp_probe_is_healthy_only_while_something_listens() -> None:
    port = free_port()
    assert not (await probe(f"tcp://127.0.0.1:{port}", 1.0)).healthy
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
    try:
        outcome = await probe(f"tcp://127.0.0.1:{port}", 1.0)
    finally:
        server.close()
    assert outcome.healthy and outcome.detail == "healthy"


async def test_http_probe_needs_a_2xx(http_server: int) -> None:
    assert (await probe(f"http://127.0.0.1:{http_server}/ok", 2.0)).healthy
    bad = await probe(f"http://127.0.0.1:{http_server}/down", 2.0)
    assert not bad.healthy and "503" in bad.detail


async def test_redis_probe_pings_a_real_server(redis_server: ServerProcess) -> None:
    assert (await probe(f"redis://127.0.0.1:{redis_server.port}/0", 2.0)).healthy
    dead = await probe(f"redis://127.0.0.1:{free_port()}/0", 1.0)
    assert not dead.healthy and "PING failed" in dead.detail


async def test_commands_report_exit_code_and_output() -> None:
    code, out = await run_command(["sh", "-c", "echo $X; exit 3"], {"X": "hi"}, 5)
    assert (code, out) == (3, "hi")


async def test_commands_that_hang_are_killed_at_the_timeout() -> None:
    code, out = await run_command(["sleep", "5"], {}, 0.2)
    assert code == -9 and "timed out" in out
