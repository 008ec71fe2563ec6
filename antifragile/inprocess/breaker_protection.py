"""Call protection: what ``@breaker`` makes of a function, a generator or an awaitable.

:func:`protect` is the body of the breaker's decorator (``CircuitBreaker.__call__``).
It drives a breaker only through its call protocol - :class:`Protectable`, declared
here beside its one caller - so every protected call keeps the breaker's semantics
(generations, outcomes, slow calls):

* coroutine functions, partials of them and objects with ``async __call__``: an async
  wrapper around ``breaker.call``;
* generator and async generator functions: the iteration is the call - it is admitted
  on the first ``next()``/``anext()``, an exception raised while iterating is
  recorded, exhaustion is a success, closing early records nothing (slow-call
  detection measures first item to exhaustion);
* anything else: a sync wrapper, admitted when called, that still protects what the
  callable returns: a coroutine or generator (nothing of it has run yet) is handed
  back wrapped, its admission moved to the await or the first ``next()`` - one never
  run holds no trial permit; an ``asyncio.Future`` is returned as is, its outcome
  recorded when it completes (awaited or not); any other awaitable is handed back
  wrapped.

``breaker.call`` and :func:`call_sync` (``breaker.call_sync``) refuse a generator
(:func:`refuse_generator`): only the decorator can protect an iteration.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from types import AsyncGeneratorType, GeneratorType
from types import CoroutineType as _CoroutineType
from typing import Any, ParamSpec, Protocol, TypeVar

from antifragile.inprocess.breaker_config import CircuitBreakerConfig

P = ParamSpec("P")
R = TypeVar("R")

GENERATOR_TYPES = (GeneratorType, AsyncGeneratorType)
"""Results ``call``/``call_sync`` refuse: an iteration is protected only when decorated."""

_COLD_TYPES = (_CoroutineType, GeneratorType, AsyncGeneratorType)


class Protectable(Protocol):
    """What :func:`protect` needs of a breaker: its name, clock and call protocol."""

    @property
    def name(self) -> str:
        """Used in error messages."""
        ...

    @property
    def clock(self) -> Callable[[], float]:
        """Monotonic seconds; durations given to the breaker are measured with it."""
        ...

    def acquire_permission(self) -> int:
        """Admit a call (its token) or raise ``CircuitOpenError``."""
        ...

    def on_success(self, token: int, duration_s: float = 0.0) -> None:
        """Record an admitted call that returned."""
        ...

    def on_error(self, token: int, duration_s: float, exc: BaseException) -> None:
        """Record an admitted call that raised ``exc``."""
        ...

    def release(self, token: int) -> None:
        """End an admitted call without a verdict."""
        ...

    @property
    def config(self) -> CircuitBreakerConfig:
        """The breaker's configuration (``slow_call_duration_s`` is read)."""
        ...

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` through the breaker, awaiting its result if awaitable."""
        ...


class RefusedGenerator(TypeError):
    """A call returned a generator outside the decorator: refused, nothing recorded."""


def refuse_generator(breaker: Protectable, token: int, gen: Any) -> None:
    """Close ``gen``, free the call's permit and raise :class:`RefusedGenerator`."""
    if isinstance(gen, GeneratorType):
        gen.close()
    breaker.release(token)
    raise RefusedGenerator(
        f"circuit {breaker.name!r}: the call returned a generator; decorate the "
        "generator function with the breaker so its iteration is protected"
    )


def call_sync(breaker: Protectable, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
    """``breaker.call_sync``: run a sync ``fn`` through ``breaker`` without an event loop.

    Raises:
        CircuitOpenError: the breaker refused the call.
        TypeError: ``fn`` returned an awaitable or a generator; nothing is recorded and
            the call's trial permit, if any, is freed.
    """
    token = breaker.acquire_permission()
    clock = breaker.clock
    timed = breaker.config.slow_call_duration_s is not None
    started = clock() if timed else 0.0
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        breaker.on_error(token, clock() - started if timed else 0.0, exc)
        raise
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # never run: no "never awaited" warning, no side effect
        breaker.release(token)
        raise TypeError(
            f"circuit {breaker.name!r}: call_sync() got an awaitable from {fn!r}; "
            "use `await breaker.call(...)` for async callables"
        )
    if isinstance(result, GENERATOR_TYPES):
        refuse_generator(breaker, token, result)
    breaker.on_success(token, clock() - started if timed else 0.0)
    return result


async def call_timed(
    breaker: Protectable, token: int, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
) -> Any:
    """``breaker.call`` with slow-call detection on: the admitted call, timed."""
    clock = breaker.clock
    started = clock()
    try:
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        elif isinstance(result, GENERATOR_TYPES):
            refuse_generator(breaker, token, result)
    except BaseException as exc:
        if not isinstance(exc, RefusedGenerator):
            breaker.on_error(token, clock() - started, exc)
        raise
    breaker.on_success(token, clock() - started)
    return result


def is_async_callable(fn: object) -> bool:
    """True for coroutine functions, partials of them and objects with async __call__."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - the method itself is inspected
    return call is not None and inspect.iscoroutinefunction(call)


def protect(breaker: Protectable, fn: Callable[P, Any]) -> Callable[P, Any]:
    """Wrap ``fn`` so every call (or iteration) goes through ``breaker`` (module doc).

    A ``staticmethod`` or ``classmethod`` object (``@breaker`` written above
    ``@staticmethod``) has its function wrapped and re-wrapped the same way, so the
    method binds as before.
    """
    if isinstance(fn, staticmethod | classmethod):
        # The descriptor itself is not the callable (a classmethod is not callable
        # at all): wrapping it in a plain function would bind `self` to it.
        return type(fn)(protect(breaker, fn.__func__))
    if inspect.isasyncgenfunction(fn):
        return _wrap_async_gen(breaker, fn)
    if inspect.isgeneratorfunction(fn):
        return _wrap_gen(breaker, fn)
    if is_async_callable(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return await breaker.call(fn, *args, **kwargs)

        return async_wrapper

    clock = breaker.clock  # fixed for the breaker's life

    @functools.wraps(fn)
    def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
        token = breaker.acquire_permission()
        started = clock()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            breaker.on_error(token, clock() - started, exc)
            raise
        if isinstance(result, _COLD_TYPES):
            # Nothing of it has run yet (a coroutine, a generator): it is admitted
            # when awaited or first iterated, as a coroutine or generator function
            # is. One never run (closed, or its task cancelled before its first
            # step) then holds no trial permit.
            breaker.release(token)
            return _cold(breaker, result)
        if isinstance(result, asyncio.Future):
            # Already running, and observable: its outcome is recorded when it
            # completes, awaited or not; the caller gets the future itself.
            result.add_done_callback(functools.partial(_future_done, breaker, token, started))
            return result
        if inspect.isawaitable(result):
            # An async function behind a sync facade: the outcome is the await.
            return _finish_awaitable(breaker, token, started, result)
        breaker.on_success(token, clock() - started)
        return result

    return sync_wrapper


def _cold(breaker: Protectable, result: Any) -> Any:
    if isinstance(result, GeneratorType):
        return _drive_gen_cold(breaker, result)
    if isinstance(result, AsyncGeneratorType):
        return _drive_async_gen(breaker, None, 0.0, lambda: result)
    return _finish_awaitable(breaker, None, 0.0, result)


def _drive_gen_cold(breaker: Protectable, gen: Generator[Any, Any, R]) -> Generator[Any, Any, R]:
    try:
        token = breaker.acquire_permission()  # on the first next()
    except BaseException:
        gen.close()
        raise
    return (yield from _drive_gen(breaker, token, breaker.clock(), gen))


def _future_done(
    breaker: Protectable, token: int, started: float, future: asyncio.Future[Any]
) -> None:
    duration = breaker.clock() - started
    if future.cancelled():
        breaker.on_error(token, duration, asyncio.CancelledError())
    elif (exc := future.exception()) is not None:
        breaker.on_error(token, duration, exc)
    else:
        breaker.on_success(token, duration)


async def _finish_awaitable(
    breaker: Protectable, token: int | None, started: float, awaitable: Awaitable[R]
) -> R:
    clock = breaker.clock
    if token is None:  # a coroutine not started yet: admitted now, when awaited
        try:
            token = breaker.acquire_permission()
        except BaseException:
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # refused: it never runs (no "never awaited")
            raise
        started = clock()
    try:
        result = await awaitable
    except BaseException as exc:
        breaker.on_error(token, clock() - started, exc)
        raise
    breaker.on_success(token, clock() - started)
    return result


def _wrap_gen(breaker: Protectable, fn: Callable[P, Generator[Any, Any, Any]]) -> Callable[P, Any]:
    @functools.wraps(fn)
    def gen_wrapper(*args: P.args, **kwargs: P.kwargs) -> Generator[Any, Any, Any]:
        token = breaker.acquire_permission()  # on the first next(): iteration is the call
        started = breaker.clock()
        return (yield from _drive_gen(breaker, token, started, fn(*args, **kwargs)))

    return gen_wrapper


def _drive_gen(
    breaker: Protectable, token: int, started: float, gen: Generator[Any, Any, R]
) -> Generator[Any, Any, R]:
    try:
        result = yield from gen
    except BaseException as exc:  # GeneratorExit (closed early) counts as nothing
        breaker.on_error(token, breaker.clock() - started, exc)
        raise
    breaker.on_success(token, breaker.clock() - started)
    return result


def _wrap_async_gen(
    breaker: Protectable, fn: Callable[P, AsyncGenerator[Any, Any]]
) -> Callable[P, Any]:
    @functools.wraps(fn)
    async def agen_wrapper(*args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[Any, Any]:
        # An async generator function itself (inspect.isasyncgenfunction holds), so
        # admission happens on the first anext(), as the wrapped body runs only then.
        # Its own loop forwards values, sends and throws to the protected iterator.
        inner = _drive_async_gen(breaker, None, 0.0, functools.partial(fn, *args, **kwargs))
        sent: Any = None
        thrown: BaseException | None = None
        try:
            while True:
                try:
                    if thrown is not None:
                        value = await inner.athrow(thrown)
                    else:
                        value = await inner.asend(sent)
                except StopAsyncIteration:
                    return
                thrown = sent = None
                try:
                    sent = yield value
                except GeneratorExit:
                    raise
                except BaseException as exc:
                    thrown = exc
        finally:
            await inner.aclose()

    return agen_wrapper


async def _drive_async_gen(
    breaker: Protectable,
    token: int | None,
    started: float,
    make: Callable[[], AsyncGenerator[Any, Any]],
) -> AsyncGenerator[Any, Any]:
    clock = breaker.clock
    if token is None:
        token = breaker.acquire_permission()
        started = clock()
    agen = make()
    sent: Any = None
    thrown: BaseException | None = None
    try:
        while True:
            try:
                if thrown is not None:
                    value = await agen.athrow(thrown)
                else:
                    value = await agen.asend(sent)
            except StopAsyncIteration:
                break
            thrown = sent = None
            try:
                sent = yield value
            except GeneratorExit:
                await agen.aclose()
                raise
            except BaseException as exc:  # thrown in by the consumer: forward it
                thrown = exc
    except BaseException as exc:  # GeneratorExit (closed early) counts as nothing
        breaker.on_error(token, clock() - started, exc)
        raise
    breaker.on_success(token, clock() - started)
