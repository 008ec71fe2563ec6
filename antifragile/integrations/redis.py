"""redis-py (asyncio): a ``Redis`` client whose commands go through a runtime's guard.

The extension point is redis-py's own: every command of ``redis.asyncio.Redis`` goes
through ``execute_command``, and a pipeline sends its commands in ``execute``.
:class:`GuardedRedis` overrides the first and its :class:`GuardedPipeline` the second
(and ``immediate_execute_command``, the commands a pipeline runs at once while it
watches keys), so that::

    client = guarded_redis(runtime, "cache", "redis://127.0.0.1:6379/0")
    await client.get("k")                  # one guarded call
    async with client.pipeline() as pipe:  # a pipeline's execute: one guarded call
        await pipe.set("a", 1).incr("b").execute()

Chosen over a connection or connection-pool subclass: those see a command in pieces
(send, then read; a pipeline as many reads) and redis-py retries inside them, while
``execute_command`` is one whole command with its retries, as the caller sees it.
Not guarded: pub/sub (``pubsub()`` listens, it does not call) and ``monitor()``.

**What counts as a failure**: connection errors, timeouts and injected faults. An error
*reply* (``ResponseError``: WRONGTYPE, NOSCRIPT, a failed EXEC...) and ``WatchError``
(a key changed under a WATCH) mean Redis answered: by default they pass the guard as a
success and are raised to the caller after it (``answered_errors``; ``()`` counts every
error as a failure). Except the replies of a server that cannot serve
(``failure_replies``, default :data:`DEFAULT_FAILURE_REPLIES`: OOM, READONLY after a
failover, CLUSTERDOWN/MASTERDOWN, TRYAGAIN): failures, as gRPC's ``UNAVAILABLE`` or an
HTTP 503 are for the other adapters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
    WatchError,
)

from antifragile.integrations import Answered, guard_of

if TYPE_CHECKING:
    from antifragile.inprocess.guard import Guard
    from antifragile.inprocess.runtime import Runtime

DEFAULT_ANSWERED_ERRORS: tuple[type[BaseException], ...] = (ResponseError, WatchError)
"""Errors that mean Redis answered: not failures of the dependency by default."""

DEFAULT_FAILURE_REPLIES: tuple[type[BaseException], ...] = (
    OutOfMemoryError,
    ReadOnlyError,
    ClusterDownError,
    TryAgainError,
)
"""Error replies of a server that cannot serve: failures even though Redis answered."""


class _Guarded:
    """The guard a client (and the pipelines and clients it makes) calls through."""

    _af_guard: Guard
    _af_answered: tuple[type[BaseException], ...]
    _af_failures: tuple[type[BaseException], ...] = DEFAULT_FAILURE_REPLIES

    def _af_bind(
        self,
        guard: Guard,
        answered: tuple[type[BaseException], ...],
        failures: tuple[type[BaseException], ...] = DEFAULT_FAILURE_REPLIES,
    ) -> None:
        self._af_guard = guard
        self._af_answered = answered
        self._af_failures = failures

    def _af_answer(self, exc: BaseException) -> Answered:
        """``exc`` as an answer of Redis, unless it says the server cannot serve."""
        if isinstance(exc, self._af_failures):
            raise exc
        return Answered(exc)

    @property
    def guard(self) -> Guard:
        """The guard every command of this client goes through."""
        return self._af_guard


# redis-py's own mixins disagree on command_info's signature (mypy sees it in any subclass).
class GuardedRedis(_Guarded, aioredis.Redis):  # type: ignore[misc]
    """``redis.asyncio.Redis`` sending each command through a guard (see the module).

    Build it with :func:`guarded_redis`.
    """

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Run one command through the guard."""
        result = await self._af_guard.call(self._af_execute, args, options)
        if type(result) is Answered:
            raise result.error
        return result

    async def _af_execute(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        try:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except self._af_answered as exc:
            return self._af_answer(exc)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        """A pipeline whose ``execute`` is one guarded call."""
        pipe = GuardedPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
        pipe._af_bind(self._af_guard, self._af_answered, self._af_failures)
        return pipe

    def client(self) -> GuardedRedis:
        """A client on one connection of the same pool, through the same guard."""
        single = GuardedRedis(connection_pool=self.connection_pool, single_connection_client=True)
        single._af_bind(self._af_guard, self._af_answered, self._af_failures)
        return single


class GuardedPipeline(_Guarded, Pipeline):  # type: ignore[misc]
    """A pipeline whose ``execute`` (and each command run at once while watching) is guarded."""

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send the queued commands as one guarded call."""
        if not self.command_stack and not self.watching:
            return []
        result = await self._af_guard.call(self._af_execute, raise_on_error)
        if type(result) is Answered:
            raise result.error
        return result  # type: ignore[no-any-return]

    async def _af_execute(self, raise_on_error: bool) -> Any:
        try:
            return await super().execute(raise_on_error)
        except self._af_answered as exc:
            return self._af_answer(exc)

    async def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        """Run a command at once (WATCH and the reads before MULTI) through the guard."""
        result = await self._af_guard.call(self._af_immediate, args, options)
        if type(result) is Answered:
            raise result.error
        return result

    async def _af_immediate(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        try:
            return await super().immediate_execute_command(  # type: ignore[no-untyped-call]
                *args, **options
            )
        except self._af_answered as exc:
            return self._af_answer(exc)


def guarded_redis(
    runtime: Runtime,
    target: str,
    url: str,
    *,
    answered_errors: tuple[type[BaseException], ...] = DEFAULT_ANSWERED_ERRORS,
    failure_replies: tuple[type[BaseException], ...] = DEFAULT_FAILURE_REPLIES,
    **kwargs: Any,
) -> GuardedRedis:
    """A ``redis.asyncio.Redis`` for ``url`` whose commands go through ``runtime.guard(target)``.

    Args:
        runtime: The runtime that owns the guard.
        target: Guard name (breaker, chaos target, metering ``guarded_call:{target}``).
        url: ``redis://``, ``rediss://`` or ``unix://`` URL, as for ``Redis.from_url``.
        answered_errors: Errors that mean Redis answered (successes for the breaker,
            still raised to the caller). Default ``ResponseError`` and ``WatchError``.
        failure_replies: Of those, the replies that are failures all the same (a
            server out of memory, read-only, cluster down). Default
            :data:`DEFAULT_FAILURE_REPLIES`; ``()``: every answered error is a success.
        **kwargs: For ``Redis.from_url`` (``decode_responses``, ``socket_timeout``...).

    Raises:
        ConfigError: ``target`` is empty.
    """
    guard = guard_of(runtime, target)
    client = cast(GuardedRedis, GuardedRedis.from_url(url, **kwargs))
    client._af_bind(guard, tuple(answered_errors), tuple(failure_replies))
    return client
