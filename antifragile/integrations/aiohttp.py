"""aiohttp: a ``ClientSession`` whose requests go through a runtime's guards.

The extension point is aiohttp's client middleware (``ClientSession(middlewares=...)``,
aiohttp 3.12+): :class:`GuardMiddleware` runs the rest of the request - connecting,
sending, reading the status and headers - inside the guard of the request's target::

    session = guarded_session(runtime, "payments")
    async with session.get("http://payments.internal/charges") as response: ...

Chosen over ``trace_configs`` (their callbacks are told of a request's stages; they
cannot hold one call's breaker permit from start to end, nor turn a status into a
failure cleanly) and over overriding the private ``ClientSession._request``. It is the
innermost middleware: middlewares of your own (``middlewares=`` here) run outside it, so
each retry they make is a guarded call of its own.

What the guarded call covers and which statuses are failures is as for the httpx
adapter (:mod:`antifragile.integrations.httpx`): status and headers, body read
afterwards outside the guard; ``failure_statuses`` default 500-599, the caller still
gets the response. A refused call raises ``CircuitOpenError`` /
``ConcurrencyLimitError``; aiohttp wraps an injected ``ConnectionError`` (an
``OSError``) in ``aiohttp.ClientOSError``, whose ``__cause__`` is the injected error.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse

from antifragile.integrations import (
    DEFAULT_FAILURE_STATUSES,
    FailureStatus,
    HostTargets,
    check_statuses,
)

if TYPE_CHECKING:
    from antifragile.inprocess.guard import Guard
    from antifragile.inprocess.runtime import Runtime


class GuardMiddleware:
    """aiohttp client middleware sending each request through the guard of its target.

    Args:
        runtime: The runtime that owns the guards.
        target: Guard of requests to hosts not in ``targets``; None: not guarded.
        targets: Host (or ``host:port``, checked first; IPv6 as ``[::1]:8443``) -> guard
            name. Default none.
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
        failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
    ) -> None:
        self._routes = HostTargets(runtime, target, targets, "guarded aiohttp session")
        self._failure_statuses = check_statuses(failure_statuses)

    def guard_for(self, request: ClientRequest) -> Guard | None:
        """The guard of ``request`` (None: not guarded)."""
        url = request.url
        return self._routes.get(url.scheme, url.host, url.port)

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """Run ``handler(request)`` through the request's guard."""
        guard = self.guard_for(request)
        if guard is None:
            return await handler(request)
        if not self._failure_statuses:
            return await guard.call(handler, request)
        try:
            return await guard.call(functools.partial(self._send, handler, request))
        except FailureStatus as failed:
            response: ClientResponse = failed.response
            return response

    async def _send(self, handler: ClientHandlerType, request: ClientRequest) -> ClientResponse:
        response = await handler(request)
        if response.status in self._failure_statuses:
            raise FailureStatus(response, response.status)
        return response


def guarded_session(
    runtime: Runtime,
    target: str | None = None,
    *,
    targets: Mapping[str, str] | None = None,
    failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
    **session_kwargs: Any,
) -> aiohttp.ClientSession:
    """An ``aiohttp.ClientSession`` whose requests go through ``runtime``'s guards.

    Create it inside a running event loop, as any ``ClientSession``.

    Args:
        runtime: The runtime that owns the guards.
        target: Guard of requests to hosts not in ``targets`` (None: unguarded).
        targets: Host (or ``host:port``) -> guard name.
        failure_statuses: Response statuses counted as failures. Default 500-599.
        **session_kwargs: For ``aiohttp.ClientSession``; its ``middlewares`` run
            outside the guard's.

    Warning: aiohttp's per-request ``middlewares=`` *replace* the session's, the guard
    included: such a request is not guarded. To use them, build the session with a
    :class:`GuardMiddleware` of your own and pass it along:
    ``session.get(url, middlewares=(mine, guard_middleware))``.

    Raises:
        ConfigError: see :class:`GuardMiddleware`.
    """
    guard = GuardMiddleware(runtime, target, targets=targets, failure_statuses=failure_statuses)
    middlewares = (*session_kwargs.pop("middlewares", ()), guard)
    return aiohttp.ClientSession(middlewares=middlewares, **session_kwargs)
