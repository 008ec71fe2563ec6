"""Real servers and guarded clients for the guarded-client tests (tests/unit and
tests/integration): an aiohttp.web HTTP server and a grpc.aio server on free ports,
started and stopped by the tests, counting the requests that reach them."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import redis.asyncio as aioredis
from aiohttp import web

from antifragile.inprocess.runtime import Runtime

ECHO = "/t.Test/Echo"
FAIL = "/t.Test/Fail"
MISSING = "/t.Test/Missing"
STREAM = "/t.Test/Stream"


def _ident(b: bytes) -> bytes:
    return b


@dataclass
class Servers:
    """The test's HTTP and gRPC servers and what reached them (path or method -> count)."""

    http_port: int = 0
    grpc_port: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    _runner: web.AppRunner | None = None
    _grpc: grpc.aio.Server | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            path = request.path
            self.hits[path] += 1
            if path == "/fail":
                return web.Response(status=503, text="down")
            if path == "/missing":
                return web.Response(status=404, text="no such thing")
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        async def echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            self.hits[f"{ECHO}:{request.decode()}"] += 1
            return request

        async def fail(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            self.hits[FAIL] += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
            raise AssertionError("abort returned")

        async def missing(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            self.hits[MISSING] += 1
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
            raise AssertionError("abort returned")

        async def stream(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self.hits[STREAM] += 1
            for i in range(3):
                yield request + str(i).encode()

        handlers = {
            "Echo": grpc.unary_unary_rpc_method_handler(echo, _ident, _ident),
            "Fail": grpc.unary_unary_rpc_method_handler(fail, _ident, _ident),
            "Missing": grpc.unary_unary_rpc_method_handler(missing, _ident, _ident),
            "Stream": grpc.unary_stream_rpc_method_handler(stream, _ident, _ident),
        }
        self._grpc = grpc.aio.server()
        self._grpc.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("t.Test", handlers),)
        )
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        await self._grpc.start()

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(None)
        if self._runner is not None:
            await self._runner.cleanup()


class Client:
    """One guarded client of one kind on one target, with the calls the tests make.

    ``ok()`` reaches the server and succeeds; ``fail()`` reaches it and the server
    fails (503 / UNAVAILABLE; for Redis a command error counted as a failure);
    ``hits()`` counts what reached the server from this client's ``ok()`` calls.
    """

    kind: str

    def __init__(self, runtime: Runtime, target: str, servers: Servers, redis_url: str) -> None:
        self.runtime = runtime
        self.target = target
        self.servers = servers
        self.redis_url = redis_url

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def ok(self) -> Any:
        raise NotImplementedError

    async def fail(self) -> Any:
        raise NotImplementedError

    async def hits(self) -> int:
        return self.servers.hits[self._ok_key]

    _ok_key = ""


class HttpxClient(Client):
    kind = "httpx"

    async def open(self) -> None:
        from antifragile.integrations.httpx import guarded_client

        self._ok_key = f"/ok/{self.target}"
        self.client = guarded_client(self.runtime, self.target, base_url=self.servers.http_url)

    async def close(self) -> None:
        await self.client.aclose()

    async def ok(self) -> Any:
        response = await self.client.get(self._ok_key)
        assert response.status_code == 200
        return response.text

    async def fail(self) -> Any:
        return (await self.client.get("/fail")).status_code


class AiohttpClient(Client):
    kind = "aiohttp"

    async def open(self) -> None:
        from antifragile.integrations.aiohttp import guarded_session

        self._ok_key = f"/ok/{self.target}"
        self.session = guarded_session(self.runtime, self.target)

    async def close(self) -> None:
        await self.session.close()

    async def ok(self) -> Any:
        async with self.session.get(self.servers.http_url + self._ok_key) as response:
            assert response.status == 200
            return await response.text()

    async def fail(self) -> Any:
        async with self.session.get(self.servers.http_url + "/fail") as response:
            return response.status


class GrpcClient(Client):
    kind = "grpc"

    async def open(self) -> None:
        from antifragile.integrations.grpc import guarded_channel

        self._ok_key = f"{ECHO}:{self.target}"
        self.channel = guarded_channel(self.runtime, self.target, self.servers.grpc_address)
        self._echo = self.channel.unary_unary(ECHO, _ident, _ident)
        self._fail = self.channel.unary_unary(FAIL, _ident, _ident)

    async def close(self) -> None:
        await self.channel.close()

    async def ok(self) -> Any:
        return await self._echo(self.target.encode())

    async def fail(self) -> Any:
        return await self._fail(b"x")


class RedisClient(Client):
    kind = "redis"

    async def open(self) -> None:
        from antifragile.integrations.redis import guarded_redis

        self.key = f"it:{self.target}:{time.monotonic_ns()}"
        # Every error a failure: a command error stands in for a failing server.
        self.client = guarded_redis(self.runtime, self.target, self.redis_url, answered_errors=())
        self.bare = aioredis.from_url(self.redis_url)

    async def hits(self) -> int:
        return int(await self.bare.get(self.key) or 0)

    async def close(self) -> None:
        await self.client.aclose()
        await self.bare.aclose()

    async def ok(self) -> Any:
        return await self.client.incr(self.key)

    async def fail(self) -> Any:
        return await self.client.hincrby(self.key, "f", 1)  # WRONGTYPE on a string


KINDS: dict[str, type[Client]] = {
    c.kind: c for c in (HttpxClient, AiohttpClient, GrpcClient, RedisClient)
}


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    """(seconds, result or the exception raised) of one call."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        result: Any = await fn()
    except Exception as exc:
        result = exc
    return loop.time() - start, result
