"""Small asyncio helpers shared by the runtime's background tasks and its call paths."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(
    tasks: Iterable[asyncio.Future[Any]], *, retry_s: float = 0.5, give_up_s: float = 10.0
) -> None:
    """Cancel ``tasks`` and wait until every one has ended.

    A single ``cancel()`` is not always enough: a library that catches the
    ``CancelledError`` inside a call it was making (a network client retrying, say)
    lets the task carry on into its next ``await``, and a plain ``await task`` then
    waits forever. So cancellation is repeated every ``retry_s`` until the task ends,
    for at most ``give_up_s`` (then it is logged and left behind). The tasks' own
    exceptions are collected, never raised: this is for shutting down.
    """
    pending = {t for t in tasks if not t.done()}
    deadline = time.monotonic() + give_up_s
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=retry_s)
        if pending and time.monotonic() >= deadline:
            log.warning("%d background task(s) ignored cancellation; left running", len(pending))
            break
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit


def resolved_future(value: Any) -> asyncio.Future[Any]:
    """A future already resolved to ``value`` (created inside a running loop).

    ``async with`` needs awaitables from ``__aenter__``/``__aexit__``; when there is
    nothing to wait for, a resolved future is the cheapest awaitable: its ``__await__``
    is C code that returns at once, whichever loop awaits it.
    """
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future
