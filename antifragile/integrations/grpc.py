"""grpc.aio: client interceptors that run each call through a runtime's guard.

The extension point is gRPC's client interceptors. :func:`guarded_channel` opens a
channel with them; :func:`interceptors` gives them for a channel of your own::

    channel = guarded_channel(runtime, "inventory", "inventory.internal:50051")
    reply = await channel.unary_unary("/inventory.Stock/Get")(request)

- **unary-unary**: the guarded call is the whole RPC, up to its response and status.
- **unary-stream**: the guarded call is the stream's opening, up to its first message
  (or its end, for an empty stream): a server that is down, or fails the RPC before
  answering, is a failure; an error later in the stream reaches the caller but is not
  counted. Faults apply before the RPC starts; a guard's ``timeout_s`` bounds the wait
  for the first message.

Stream-unary and stream-stream calls are not guarded (their requests are written by the
caller while the call runs; guard them with ``async with guard`` around the call).

**Which status codes are failures** (``failure_codes``): by default those that mean the
server failed - ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``INTERNAL``, ``UNKNOWN`` and
``DATA_LOSS`` (the codes gRPC maps from HTTP 5xx). Any other code (``NOT_FOUND``,
``INVALID_ARGUMENT``, ``RESOURCE_EXHAUSTED`` - a quota, like HTTP 429...) means the
server answered: a success for the breaker. The caller gets the same
``grpc.aio.AioRpcError`` either way. A refused call raises ``CircuitOpenError`` /
``ConcurrencyLimitError`` and an injected fault its own exception, not an
``AioRpcError``: nothing was sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from antifragile.integrations import Answered, guard_of

if TYPE_CHECKING:
    from antifragile.inprocess.guard import Guard
    from antifragile.inprocess.runtime import Runtime

DEFAULT_FAILURE_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
    }
)
"""Status codes that count as failures of the server by default."""

_Details = grpc.aio.ClientCallDetails


class _GuardInterceptor:
    """What both interceptors share: the guard and the codes counted as failures.

    Args:
        guard: The guard of the channel's target.
        failure_codes: Status codes counted as failures. Default
            :data:`DEFAULT_FAILURE_CODES`.
    """

    def __init__(
        self, guard: Guard, failure_codes: Iterable[grpc.StatusCode] = DEFAULT_FAILURE_CODES
    ) -> None:
        self.guard = guard
        self._failure_codes = frozenset(failure_codes)


# Two classes, not one with both methods: a channel files each interceptor under the
# first kind it is an instance of, so one object would never see unary-stream calls.
class UnaryUnaryGuard(_GuardInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
    """Unary-unary interceptor: the whole RPC, to its status, is one guarded call."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[_Details, Any], Awaitable[grpc.aio.UnaryUnaryCall[Any, Any]]],
        client_call_details: _Details,
        request: Any,
    ) -> Any:
        """Run the RPC, to its status, through the guard; returns the finished call."""
        result = await self.guard.call(self._unary, continuation, client_call_details, request)
        if type(result) is Answered:
            raise result.error
        return result

    async def _unary(
        self,
        continuation: Callable[[_Details, Any], Awaitable[grpc.aio.UnaryUnaryCall[Any, Any]]],
        details: _Details,
        request: Any,
    ) -> Any:
        call = await continuation(details, request)
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            if exc.code() in self._failure_codes:
                raise
            return Answered(exc)
        return call  # done: awaiting it again gives the response, metadata kept


class UnaryStreamGuard(_GuardInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Unary-stream interceptor: opening the stream, to its first message, is one guarded call."""

    async def intercept_unary_stream(
        self,
        continuation: Callable[[_Details, Any], Awaitable[grpc.aio.UnaryStreamCall[Any, Any]]],
        client_call_details: _Details,
        request: Any,
    ) -> AsyncIterator[Any]:
        """Open the stream and read its first message through the guard."""
        result = await self.guard.call(self._open, continuation, client_call_details, request)
        if type(result) is Answered:
            raise result.error
        call, first = result
        return _rest(call, first)

    async def _open(
        self,
        continuation: Callable[[_Details, Any], Awaitable[grpc.aio.UnaryStreamCall[Any, Any]]],
        details: _Details,
        request: Any,
    ) -> Any:
        call = await continuation(details, request)
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            if exc.code() in self._failure_codes:
                raise
            return Answered(exc)
        return call, first


async def _rest(call: grpc.aio.UnaryStreamCall[Any, Any], first: Any) -> AsyncIterator[Any]:
    """The stream's messages: ``first`` (already read), then the rest, with ``read()``.

    (gRPC refuses mixing ``read()`` and ``async for`` on one call.)
    """
    message = first
    while message is not grpc.aio.EOF:
        yield message
        message = await call.read()


def interceptors(
    runtime: Runtime,
    target: str,
    *,
    failure_codes: Iterable[grpc.StatusCode] = DEFAULT_FAILURE_CODES,
) -> list[grpc.aio.ClientInterceptor]:
    """The interceptors guarding a channel's calls with ``runtime.guard(target)``.

    Raises:
        ConfigError: ``target`` is empty.
    """
    guard = guard_of(runtime, target)
    return [UnaryUnaryGuard(guard, failure_codes), UnaryStreamGuard(guard, failure_codes)]


def guarded_channel(
    runtime: Runtime,
    target: str,
    address: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    failure_codes: Iterable[grpc.StatusCode] = DEFAULT_FAILURE_CODES,
    interceptors_: Sequence[grpc.aio.ClientInterceptor] = (),
    **kwargs: Any,
) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``address`` whose unary calls go through ``runtime.guard(target)``.

    Args:
        runtime: The runtime that owns the guard.
        target: Guard name (breaker, chaos target, metering ``guarded_call:{target}``).
        address: ``host:port`` of the server.
        credentials: TLS credentials (a secure channel); None: an insecure channel.
        failure_codes: Status codes counted as failures. Default
            :data:`DEFAULT_FAILURE_CODES`.
        interceptors_: Interceptors of your own; they run outside the guard's.
        **kwargs: For ``grpc.aio.insecure_channel`` / ``secure_channel``
            (``options``, ``compression``).

    Raises:
        ConfigError: ``target`` is empty.
    """
    chain = [*interceptors_, *interceptors(runtime, target, failure_codes=failure_codes)]
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, interceptors=chain, **kwargs)
    return grpc.aio.insecure_channel(address, interceptors=chain, **kwargs)
