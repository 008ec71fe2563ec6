"""cancel_and_wait: background tasks end even when a library swallows a cancellation."""

from __future__ import annotations

import asyncio
import contextlib

from antifragile.inprocess._aio import cancel_and_wait


async def test_a_task_that_swallows_the_first_cancellation_still_ends() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                # What a client library retrying inside a call does by mistake.
                swallowed += 1
                if swallowed > 1:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task], retry_s=0.05), 2)
    assert task.cancelled() and swallowed == 2


async def test_failed_tasks_are_collected_not_raised() -> None:
    async def boom() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(boom())
    with contextlib.suppress(RuntimeError):
        await asyncio.sleep(0.01)
    await cancel_and_wait([task])
    assert isinstance(task.exception(), RuntimeError)


async def test_a_task_that_never_ends_is_given_up_after_the_limit() -> None:
    released = asyncio.Event()

    async def immortal() -> None:
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    task = asyncio.create_task(immortal())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task], retry_s=0.02, give_up_s=0.1), 2)
    assert not task.done()
    released.set()
    task.cancel()
    await task
