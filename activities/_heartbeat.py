"""Heartbeats for activities that may run for seconds: a worker crash is noticed quickly.

An activity that heartbeats, started with a ``heartbeat_timeout``, is retried on another
worker that long after its worker died, instead of after its whole start-to-close timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from temporalio import activity

HEARTBEAT_EVERY_S = 1.0
"""Seconds between heartbeats; the workflows' ``heartbeat_timeout`` is 10x this. The SDK
sends them on to the server at most every 0.8x the timeout."""


@contextlib.asynccontextmanager
async def heartbeating(every_s: float = HEARTBEAT_EVERY_S) -> AsyncIterator[None]:
    """Heartbeat every ``every_s`` seconds while the body runs (inside an activity only).

    The body must not block the event loop (run blocking calls with ``asyncio.to_thread``),
    or no heartbeat goes out and the activity is retried elsewhere as if its worker died.
    """

    async def _beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(every_s)

    task = asyncio.create_task(_beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
