"""The demo service around the agent bus: its /healthz, its load, and the audit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import redis.asyncio as aioredis

from antifragile.demo.agent_bus import AgentBus, decode_batch


class HealthEndpoint:
    """``GET /healthz`` of the bus: 200 when Redis answers a PING through the guard.

    This is the recovery's probe. It asks the service's own call path (guard, breaker,
    fault checks) whether its dependency works, so it fails while chaos is in place.
    """

    def __init__(self, ping: Callable[[], Awaitable[Any]]) -> None:
        self._ping = ping
        self._server: asyncio.Server | None = None
        self.port = 0
        self.answers: dict[int, int] = {}

    async def start(self) -> str:
        """Listen on a free loopback port; the probe URL."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}/healthz"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            try:
                await self._ping()
                status, body = 200, b"ok\n"
            except Exception as exc:
                status, body = 503, f"{type(exc).__name__}: {exc}\n".encode()
            self.answers[status] = self.answers.get(status, 0) + 1
            reason = "OK" if status == 200 else "Service Unavailable"
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + body
            )
            with contextlib.suppress(Exception):
                await writer.drain()
        finally:
            writer.close()

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


# --------------------------------------------------------------------------- load


class Load:
    """Publishes ``rate`` messages/s into the bus (open loop) until stopped."""

    def __init__(self, bus: AgentBus, rate: int) -> None:
        self.bus = bus
        self.rate = rate
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the bus and the publisher."""
        self._tasks = [
            asyncio.create_task(self.bus.run(self._stop), name="demo-bus"),
            asyncio.create_task(self._publish(), name="demo-publisher"),
        ]

    async def _publish(self) -> None:
        topics = ("plan", "act", "observe", "reflect")
        start = time.perf_counter()
        sent = 0
        while not self._stop.is_set():
            due = int((time.perf_counter() - start) * self.rate)
            while sent < due:
                self.bus.publish(topics[sent & 3], b"demo message %d" % sent)
                sent += 1
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Stop publishing; the bus delivers and persists what is left."""
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def rate_over(bus: AgentBus, seconds: float) -> tuple[float, float]:
    """Messages/s delivered and persisted over the next ``seconds``."""
    d0, p0, t0 = bus.stats.delivered, bus.stats.persisted, time.perf_counter()
    await asyncio.sleep(seconds)
    dt = time.perf_counter() - t0
    return (bus.stats.delivered - d0) / dt, (bus.stats.persisted - p0) / dt


async def audit_stream(redis: aioredis.Redis, stream: str, published: int) -> tuple[int, int, int]:
    """(found, missing, duplicated) messages 1..``published`` in ``stream``."""
    seen = bytearray(published + 1)
    duplicates = 0
    last = b"-"
    while True:
        page = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await redis.xrange(stream, min=last, max="+", count=2_000),
        )
        if last != b"-":
            page = page[1:]  # XRANGE includes the entry it resumes from
        if not page:
            break
        for _entry_id, fields in page:
            for seq, _topic, _body in decode_batch(fields):
                if 0 < seq <= published:
                    duplicates += seen[seq]
                    seen[seq] = 1
        last = page[-1][0]
    found = sum(seen)
    return found, published - found, duplicates
