"""Following one Redis pub/sub channel from a service process: reconnect, resync, dispatch.

The fault subscriber and the config subscriber keep local state in step with Redis the
same way: subscribe, then resync (anything published from the subscription on is seen,
so the resync repairs exactly the gap), then hand every message on; on a Redis error,
mark themselves disconnected and retry with backoff (0.2 s doubling to 2 s), keeping the
state they have; and re-read everything every ``resync_interval_s`` in case a message was
lost. This module is that loop, once. It never runs on a call path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import NoReturn

import redis.asyncio as aioredis
from redis.exceptions import RedisError

INITIAL_BACKOFF_S = 0.2
"""First wait before reconnecting after a Redis error, seconds (doubles each time)."""
MAX_BACKOFF_S = 2.0
"""Longest wait between reconnection attempts, seconds."""

REDIS_DOWN: tuple[type[BaseException], ...] = (RedisError, OSError)
"""Errors that mean "Redis is unreachable or failed": retried, never raised."""


async def follow_channel(
    url: str,
    channel: str,
    *,
    on_subscribed: Callable[[], Awaitable[None]],
    on_message: Callable[[bytes], Awaitable[None]],
    on_down: Callable[[BaseException], None],
    errors: tuple[type[BaseException], ...] = REDIS_DOWN,
) -> NoReturn:
    """Follow ``channel`` on the Redis at ``url`` until cancelled.

    Args:
        url: Redis URL.
        channel: The pub/sub channel.
        on_subscribed: Called after each (re)subscription, before any message: the resync.
        on_message: Called with each message's data, in order.
        on_down: Called with the error when Redis fails (then a backoff and a reconnect).
        errors: What counts as Redis failing. Default :data:`REDIS_DOWN`.
    """
    backoff = INITIAL_BACKOFF_S
    while True:
        client = pubsub = None
        try:
            client = aioredis.from_url(url, socket_connect_timeout=1.0, socket_timeout=None)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(channel)
            await on_subscribed()
            backoff = INITIAL_BACKOFF_S
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "message":
                    await on_message(message["data"])
        except asyncio.CancelledError:
            raise
        except errors as exc:
            on_down(exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()


async def resync_every(
    interval_s: float,
    resync: Callable[[], Awaitable[None]],
    on_down: Callable[[BaseException], None],
) -> NoReturn:
    """Call ``resync`` every ``interval_s`` seconds until cancelled.

    A Redis error goes to ``on_down``; the next round tries again.
    """
    while True:
        await asyncio.sleep(interval_s)
        try:
            await resync()
        except REDIS_DOWN as exc:
            on_down(exc)
