"""httpx: an ``AsyncClient`` whose requests go through a runtime's guards.

The extension point is httpx's transport: :class:`GuardedTransport` wraps the transport
the client would use (``httpx.AsyncHTTPTransport`` unless one is given) and sends each
request through the guard of its target, chosen per host::

    client = guarded_client(runtime, "payments", base_url="http://payments.internal")
    client = guarded_client(runtime, "api", targets={"auth.internal": "auth"})
    await client.get("/charges")  # breaker, chaos faults and metering of "payments"

**What the guarded call covers**: from sending the request to the response's status
and headers. The body is read by the caller afterwards, outside the guard (a breaker or
a fault never cuts a body half-read; the guard's ``timeout_s`` bounds the headers).

**Failure statuses** (``failure_statuses``, default 500-599): a response with one of
them counts as a failure of the dependency for its breaker - a server that answers 503
to every request is down, whatever its TCP stack says. The caller still receives the
response, exactly as without the guard (httpx raises nothing for a status unless
``raise_for_status`` is called). Other statuses, 4xx included, are the dependency
answering: successes (a 404 says the service works). ``failure_statuses=()`` counts
only exceptions (connect errors, timeouts, injected faults).

A refused call raises ``CircuitOpenError`` / ``ConcurrencyLimitError`` and an injected
fault its exception (``ConnectionError`` etc., an ``InjectedFault``), not an
``httpx.HTTPError``: nothing was sent, and the caller can tell a fault from the network.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from antifragile.integrations import (
    DEFAULT_FAILURE_STATUSES,
    FailureStatus,
    HostTargets,
    check_statuses,
)

if TYPE_CHECKING:
    from antifragile.inprocess.guard import Guard
    from antifragile.inprocess.runtime import Runtime


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport sending each request through the guard of its target.

    Args:
        runtime: The runtime that owns the guards.
        target: Guard of requests to hosts not in ``targets``; None: those requests
            are not guarded. Default None.
        targets: Host -> guard name; a key is a host (``api.example.com``) or a host
            and port (``api.example.com:8443``, checked first; the scheme's default port
            when the URL has none), IPv6 as ``[::1]:8443``. Default none.
        transport: The transport that sends requests. Default
            ``httpx.AsyncHTTPTransport()``.
        failure_statuses: Response statuses counted as failures. Default 500-599.

    Raises:
        ConfigError: neither ``target`` nor ``targets`` given, an empty guard name, or a
            status that is not an integer from 100 to 599.
    """

    def __init__(
        self,
        runtime: Runtime,
        target: str | None = None,
        *,
        targets: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
    ) -> None:
        self._routes = HostTargets(runtime, target, targets, "guarded httpx client")
        self._transport = transport or httpx.AsyncHTTPTransport()
        self._failure_statuses = check_statuses(failure_statuses)

    def guard_for(self, url: httpx.URL) -> Guard | None:
        """The guard of a request to ``url`` (None: not guarded)."""
        return self._routes.get(url.scheme, url.host, url.port)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through its target's guard (see the module docstring)."""
        guard = self.guard_for(request.url)
        if guard is None:
            return await self._transport.handle_async_request(request)
        if not self._failure_statuses:
            return await guard.call(self._transport.handle_async_request, request)
        try:
            return await guard.call(functools.partial(self._send, request))
        except FailureStatus as failed:
            response: httpx.Response = failed.response
            return response

    async def _send(self, request: httpx.Request) -> httpx.Response:
        response = await self._transport.handle_async_request(request)
        if response.status_code in self._failure_statuses:
            raise FailureStatus(response, response.status_code)
        return response

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._transport.aclose()

    def wrapping(self, transport: httpx.AsyncBaseTransport) -> GuardedTransport:
        """The same guards and statuses over another transport (a proxy's, a mount's)."""
        other = copy.copy(self)
        other._transport = transport
        return other


def guarded_client(
    runtime: Runtime,
    target: str | None = None,
    *,
    targets: Mapping[str, str] | None = None,
    failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
    **httpx_kwargs: Any,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose requests go through ``runtime``'s guards.

    The client is built by httpx from ``httpx_kwargs`` exactly as without the guard -
    its transport, and the transports of its proxies (``proxy=``, or ``HTTP_PROXY`` /
    ``HTTPS_PROXY`` / ``ALL_PROXY`` from the environment with ``trust_env``) and of its
    ``mounts`` - then every one of those transports is wrapped: a request is guarded
    whichever transport httpx picks for it.

    Args:
        runtime: The runtime that owns the guards.
        target: Guard of requests to hosts not in ``targets`` (None: unguarded).
        targets: Host (or ``host:port``) -> guard name.
        failure_statuses: Response statuses counted as failures. Default 500-599.
        **httpx_kwargs: For ``httpx.AsyncClient`` (``transport``, ``proxy``,
            ``mounts``, ``verify``... as there).

    Raises:
        ConfigError: see :class:`GuardedTransport`.
    """
    client = httpx.AsyncClient(**httpx_kwargs)
    # httpx has no public hook over the transports it chose (a transport of its own and
    # one per proxy or mount): wrap them where AsyncClient keeps them.
    base: httpx.AsyncBaseTransport = client._transport
    mounts: dict[Any, httpx.AsyncBaseTransport | None] = client._mounts
    wrapped = GuardedTransport(
        runtime,
        target,
        targets=targets,
        transport=base,
        failure_statuses=failure_statuses,
    )
    client._transport = wrapped
    client._mounts = {
        pattern: None if mounted is None else wrapped.wrapping(mounted)
        for pattern, mounted in mounts.items()
    }
    return client
