"""Guarded clients (antifragile.integrations) against real servers started here:
an aiohttp.web HTTP server, a grpc.aio server and the session's Redis. Each client's calls
pass its guard (breaker, metering), a failing server opens the breaker, and each of the six
fault kinds, installed in the runtime's fault table, acts on exactly the guarded target."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
import redis.exceptions

from antifragile.errors import ConfigError
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.breaker_state import CircuitOpenError, CircuitState
from antifragile.inprocess.faults import InjectedFault, build_fault
from antifragile.inprocess.guard import ConcurrencyLimitError
from antifragile.inprocess.runtime import Runtime
from antifragile.models.chaos import FaultSpec
from antifragile.settings import Settings
from tests.integ_clients_support import KINDS, MISSING, STREAM, Client, Servers, timed

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    started = Servers()
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


@pytest.fixture
async def runtime(redis_url: str) -> AsyncIterator[Runtime]:
    rt = Runtime(
        Settings(redis_url=redis_url),
        instance_id=f"integ-{uuid.uuid4().hex[:6]}",
        bridge=False,
        metering=False,
        fault_plane=False,
    )
    yield rt
    await rt.stop()


async def pair(
    kind: str, runtime: Runtime, servers: Servers, redis_url: str
) -> tuple[Client, Client]:
    """Two clients of ``kind`` on the same server: one on target ``a-…``, one on ``b-…``."""
    tag = uuid.uuid4().hex[:6]
    config = CircuitBreakerConfig(failure_threshold=3, open_duration_s=60)
    clients = []
    for name in (f"a-{kind}-{tag}", f"b-{kind}-{tag}"):
        runtime.guard(name, breaker_config=config, max_concurrency=4)
        client = KINDS[kind](runtime, name, servers, redis_url)
        await client.open()
        clients.append(client)
    return clients[0], clients[1]


@pytest.mark.parametrize("kind", list(KINDS))
async def test_calls_pass_are_counted_and_a_failing_server_opens_the_breaker(
    kind: str, runtime: Runtime, servers: Servers, redis_url: str
) -> None:
    a, b = await pair(kind, runtime, servers, redis_url)
    guard = runtime.guards[a.target]
    try:
        for _ in range(5):
            await a.ok()
        assert await a.hits() == 5
        assert guard.calls == 5  # metered: each call once
        assert guard.breaker.state is CircuitState.CLOSED
        for _ in range(3):
            _, outcome = await timed(a.fail)
        # The caller sees what the bare client gives: a 503 response / the server's error.
        if kind in ("httpx", "aiohttp"):
            assert outcome == 503
        elif kind == "grpc":
            assert isinstance(outcome, grpc.aio.AioRpcError)
            assert outcome.code() is grpc.StatusCode.UNAVAILABLE
        else:
            assert isinstance(outcome, redis.exceptions.ResponseError)
        assert guard.breaker.state is CircuitState.OPEN
        with pytest.raises(CircuitOpenError):
            await a.ok()
        assert await a.hits() == 5  # refused: never reached the server
        assert guard.calls == 8
        # The other target is untouched.
        await b.ok()
        assert runtime.guards[b.target].breaker.state is CircuitState.CLOSED
        assert await b.hits() == 1
    finally:
        await a.close()
        await b.close()


def spec(kind: str, target: str, **kw: Any) -> FaultSpec:
    return FaultSpec(
        experiment_id=f"chaos-unit-{uuid.uuid4().hex[:6]}",
        chaos_type=kind,
        target=target,
        blast_radius=[target],
        **kw,
    )


FAULTS: dict[str, dict[str, Any]] = {
    "LATENCY": {"latency_ms": 200},
    "ERROR": {},
    "TIMEOUT": {"timeout_ms": 150},
    "NETWORK_PARTITION": {},
    "CIRCUIT_BREAKER": {},
    "RESOURCE_EXHAUSTION": {"resource_type": "CONNECTIONS", "resource_level": 1.0},
}


def injected(exc: Any, kind: type[BaseException]) -> bool:
    """``exc`` is the injected error (aiohttp wraps an OSError in ClientOSError)."""
    for e in (exc, getattr(exc, "__cause__", None)):
        if isinstance(e, InjectedFault) and isinstance(e, kind):
            return True
    return False


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("kind", list(KINDS))
async def test_each_fault_acts_on_exactly_the_guarded_target(
    kind: str, fault: str, runtime: Runtime, servers: Servers, redis_url: str
) -> None:
    a, b = await pair(kind, runtime, servers, redis_url)
    try:
        await a.ok()
        await b.ok()
        installed = build_fault(spec(fault, a.target, **FAULTS[fault]))
        runtime.faults.install(a.target, installed)
        hits_before = await a.hits()
        took, outcome = await timed(a.ok)
        _, other = await timed(b.ok)
        assert not isinstance(other, BaseException), other
        assert await b.hits() == 2  # the other target's call reached its server
        # Only the guarded target's call was affected (counted by the fault itself, not
        # by a wall-clock bound that a loaded machine can break).
        assert installed.stats.affected == 1, installed.stats
        if fault == "LATENCY":
            assert not isinstance(outcome, BaseException), outcome
            assert took >= 0.19, took
            assert await a.hits() == hits_before + 1
        else:
            expected: dict[str, type[BaseException]] = {
                "ERROR": RuntimeError,
                "TIMEOUT": TimeoutError,
                "NETWORK_PARTITION": ConnectionError,
                "CIRCUIT_BREAKER": CircuitOpenError,
                "RESOURCE_EXHAUSTION": ConcurrencyLimitError,
            }
            if fault in ("CIRCUIT_BREAKER", "RESOURCE_EXHAUSTION"):
                assert isinstance(outcome, expected[fault]), repr(outcome)
            else:
                assert injected(outcome, expected[fault]), repr(outcome)
            if fault == "TIMEOUT":
                assert took >= 0.14, took
            assert await a.hits() == hits_before  # the call never reached the server
        # Removed: the target's calls pass again (the forced-open breaker is reset).
        runtime.faults.remove(a.target)
        if fault != "CIRCUIT_BREAKER":
            assert runtime.guards[a.target].breaker.state is CircuitState.CLOSED
        await a.ok()
    finally:
        await a.close()
        await b.close()


async def test_httpx_targets_by_host_and_statuses(runtime: Runtime, servers: Servers) -> None:
    from antifragile.integrations.httpx import guarded_client

    config = CircuitBreakerConfig(failure_threshold=2, open_duration_s=60)
    runtime.guard("by-host", breaker_config=config)
    runtime.guard("by-port", breaker_config=config)
    runtime.guard("rest", breaker_config=config)
    port = servers.http_port
    client = guarded_client(
        runtime, "rest", targets={"localhost": "by-host", f"127.0.0.1:{port}": "by-port"}
    )
    try:
        await client.get(f"http://127.0.0.1:{port}/ok/p")
        await client.get(f"http://localhost:{port}/ok/h")
        assert runtime.guards["by-port"].calls == 1 and runtime.guards["by-host"].calls == 1
        assert runtime.guards["rest"].calls == 0
        # 404: the server answered, a success; 503 twice opens the breaker.
        for _ in range(3):
            assert (await client.get(f"http://localhost:{port}{'/missing'}")).status_code == 404
        assert runtime.guards["by-host"].breaker.state is CircuitState.CLOSED
        for _ in range(2):
            assert (await client.get(f"http://localhost:{port}/fail")).status_code == 503
        assert runtime.guards["by-host"].breaker.state is CircuitState.OPEN
        with pytest.raises(CircuitOpenError):
            await client.get(f"http://localhost:{port}/ok/h")
        await client.get(f"http://127.0.0.1:{port}/ok/p")  # another target: still passes
    finally:
        await client.aclose()
    # failure_statuses=(): only exceptions count.
    runtime.guard("lenient", breaker_config=config)
    lenient = guarded_client(runtime, "lenient", failure_statuses=())
    try:
        for _ in range(3):
            assert (await lenient.get(f"{servers.http_url}/fail")).status_code == 503
        assert runtime.guards["lenient"].breaker.state is CircuitState.CLOSED
    finally:
        await lenient.aclose()
    with pytest.raises(ConfigError, match=r"failure_statuses.*got 700"):
        guarded_client(runtime, "x", failure_statuses=[500, 700])
    with pytest.raises(ConfigError, match="give a target"):
        guarded_client(runtime)
    with pytest.raises(ConfigError, match="target: must be a non-empty"):
        guarded_client(runtime, "")
    # A transport given is the one wrapped.
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200)

    mocked = guarded_client(runtime, "rest", transport=httpx.MockTransport(handler))
    try:
        await mocked.get("http://nowhere.invalid/x")
    finally:
        await mocked.aclose()
    assert seen == ["http://nowhere.invalid/x"] and runtime.guards["rest"].calls == 1


async def test_aiohttp_answered_statuses_and_own_middlewares(
    runtime: Runtime, servers: Servers
) -> None:
    from aiohttp import ClientHandlerType, ClientRequest, ClientResponse

    from antifragile.integrations.aiohttp import guarded_session

    order: list[str] = []

    async def outer(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        order.append(f"outer calls={runtime.guards['aio'].calls}")
        return await handler(request)

    runtime.guard("aio", breaker_config=CircuitBreakerConfig(failure_threshold=2))
    session = guarded_session(runtime, "aio", middlewares=(outer,))
    try:
        for _ in range(3):
            async with session.get(servers.http_url + "/missing") as response:
                assert response.status == 404
                assert await response.text() == "no such thing"  # body read after the guard
        assert runtime.guards["aio"].breaker.state is CircuitState.CLOSED
        assert order == ["outer calls=0", "outer calls=1", "outer calls=2"]
    finally:
        await session.close()


async def test_grpc_answered_codes_and_streams(runtime: Runtime, servers: Servers) -> None:
    from antifragile.integrations.grpc import guarded_channel

    runtime.guard("rpc", breaker_config=CircuitBreakerConfig(failure_threshold=2))
    channel = guarded_channel(runtime, "rpc", servers.grpc_address)
    guard = runtime.guards["rpc"]
    try:
        missing = channel.unary_unary(MISSING, lambda b: b, lambda b: b)
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await missing(b"x")
            assert info.value.code() is grpc.StatusCode.NOT_FOUND
        assert guard.breaker.state is CircuitState.CLOSED and guard.calls == 3
        # A call's metadata and code survive the interceptor.
        call = channel.unary_unary("/t.Test/Echo", lambda b: b, lambda b: b)(b"hi")
        assert await call == b"hi"
        assert await call.code() is grpc.StatusCode.OK
        # Unary-stream: every message, by iteration or read(); one guarded call each.
        stream = channel.unary_stream(STREAM, lambda b: b, lambda b: b)
        assert [m async for m in stream(b"s")] == [b"s0", b"s1", b"s2"]
        reader = stream(b"r")
        got = []
        while (message := await reader.read()) is not grpc.aio.EOF:
            got.append(message)
        assert got == [b"r0", b"r1", b"r2"]
        assert guard.calls == 6
        # A stream's opening is guarded: a partition fails it before any message.
        runtime.faults.install("rpc", build_fault(spec("NETWORK_PARTITION", "rpc")))
        with pytest.raises(ConnectionError):
            [m async for m in stream(b"s")]
        runtime.faults.remove("rpc")
    finally:
        await channel.close()


async def test_redis_pipelines_are_one_guarded_call_and_replies_are_answers(
    runtime: Runtime, redis_url: str
) -> None:
    from antifragile.integrations.redis import guarded_redis

    runtime.guard("kv", breaker_config=CircuitBreakerConfig(failure_threshold=2))
    client = guarded_redis(runtime, "kv", redis_url, decode_responses=True)
    guard = runtime.guards["kv"]
    key = f"kv:{uuid.uuid4().hex[:8]}"
    try:
        async with client.pipeline() as pipe:
            assert await pipe.set(key, 1).incr(key).get(key).execute() == [True, 2, "2"]
        assert guard.calls == 1
        async with client.pipeline(transaction=False) as pipe:
            assert await pipe.execute() == []  # nothing queued: no call
        assert guard.calls == 1
        # Error replies mean Redis answered: never a failure by default.
        for _ in range(3):
            with pytest.raises(redis.exceptions.ResponseError):
                await client.hincrby(key, "f", 1)
        assert guard.breaker.state is CircuitState.CLOSED

        # WATCH runs at once (guarded); a transaction helper goes through the pipeline.
        async def bump(pipe: Any) -> None:
            value = int(await pipe.get(key))
            pipe.multi()
            pipe.set(key, value + 1)

        await client.transaction(bump, key)
        assert await client.get(key) == "3"
        single = client.client()
        assert await single.get(key) == "3"
        await single.aclose()
        calls = guard.calls
        runtime.faults.install("kv", build_fault(spec("ERROR", "kv")))
        with pytest.raises(RuntimeError):
            async with client.pipeline() as pipe:
                await pipe.incr(key).execute()
        runtime.faults.remove("kv")
        assert await client.get(key) == "3" and guard.calls == calls + 2
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("key", "url"),
    [
        ("[::1]:8443", "http://[::1]:8443/x"),
        ("[::1]", "http://[::1]:8443/x"),
        ("::1", "https://[::1]/x"),
        ("API.example.com", "http://api.EXAMPLE.com/x"),
        ("api.example.com:80", "http://api.example.com/x"),  # the scheme's default port
        ("api.example.com:443", "https://api.example.com/x"),
    ],
)
async def test_targets_by_host_accept_ipv6_default_ports_and_case(
    runtime: Runtime, key: str, url: str
) -> None:
    import aiohttp
    import yarl

    from antifragile.integrations.aiohttp import GuardMiddleware
    from antifragile.integrations.httpx import GuardedTransport

    mapped = runtime.guard(f"mapped-{uuid.uuid4().hex[:6]}")
    transport = GuardedTransport(runtime, "rest", targets={key: mapped.name})
    assert transport.guard_for(httpx.URL(url)) is mapped
    middleware = GuardMiddleware(runtime, "rest", targets={key: mapped.name})
    async with aiohttp.ClientSession() as session:
        request = aiohttp.ClientRequest("GET", yarl.URL(url), loop=asyncio.get_running_loop())
        assert middleware.guard_for(request) is mapped
        del session
    # Another port of the same host is not that target when the key names a port.
    if key.endswith(("8443", ":80", ":443")):
        other = httpx.URL(url).copy_with(port=9)
        assert transport.guard_for(other) is runtime.guards["rest"]


@pytest.mark.parametrize("key", ["http://api.example.com", "api:port", "[::1", "[::1]x", "", "h:0"])
def test_targets_by_host_refuse_keys_that_can_never_match(runtime: Runtime, key: str) -> None:
    from antifragile.integrations.httpx import guarded_client

    with pytest.raises(ConfigError, match=r"targets: keys must be.*got"):
        guarded_client(runtime, targets={key: "x"})


async def test_httpx_requests_through_a_proxy_or_a_mount_are_guarded_too(
    runtime: Runtime, servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpx sends through a proxy's or a mount's own transport, not the client's: every
    one is wrapped, and the environment's proxies stay in use as without the guard.
    (The test's HTTP server stands in for the proxy: it answers absolute-form requests.)"""
    from antifragile.integrations.httpx import guarded_client

    guard = runtime.guard(f"px-{uuid.uuid4().hex[:6]}")
    proxied = guarded_client(runtime, guard.name, proxy=servers.http_url)
    mounted = guarded_client(
        runtime,
        guard.name,
        mounts={"http://mounted.invalid": httpx.AsyncHTTPTransport(proxy=servers.http_url)},
    )
    monkeypatch.setenv("HTTP_PROXY", servers.http_url)
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    from_env = guarded_client(runtime, guard.name)
    try:
        assert (await proxied.get("http://example.invalid/ok/proxy")).text == "ok"
        assert (await mounted.get("http://mounted.invalid/ok/mount")).text == "ok"
        assert (await from_env.get("http://example.invalid/ok/env")).text == "ok"
    finally:
        for client in (proxied, mounted, from_env):
            await client.aclose()
    assert servers.hits["/ok/proxy"] == servers.hits["/ok/mount"] == servers.hits["/ok/env"] == 1
    assert guard.calls == 3


async def test_redis_replies_of_a_server_that_cannot_serve_are_failures(
    runtime: Runtime, tmp_path: Any
) -> None:
    """OOM (here: maxmemory 1 with noeviction) is a reply, but Redis is failing: the
    breaker opens, as for gRPC UNAVAILABLE or an HTTP 503. Its own Redis: the session's
    is shared."""
    from antifragile.integrations.redis import guarded_redis
    from antifragile.stack.processes import start_redis

    server = start_redis(log_path=tmp_path / "redis.log")
    url = f"redis://127.0.0.1:{server.port}/0"
    name = f"oom-{uuid.uuid4().hex[:6]}"
    guard = runtime.guard(name, breaker_config=CircuitBreakerConfig(failure_threshold=2))
    client = guarded_redis(runtime, name, url)
    lenient = guarded_redis(runtime, f"{name}-lenient", url, failure_replies=())
    try:
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", 1)
        for _ in range(2):
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                await client.set("k", "v")
        assert guard.breaker.state is CircuitState.OPEN
        with pytest.raises(CircuitOpenError):
            await client.get("k")
        for _ in range(6):  # failure_replies=(): answered, a success
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                await lenient.set("k", "v")
        assert runtime.guards[f"{name}-lenient"].breaker.state is CircuitState.CLOSED
    finally:
        await client.aclose()
        await lenient.aclose()
        server.stop()
