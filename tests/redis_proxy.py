"""A TCP proxy in front of a real Redis that can lose the reply of a script call.

Armed with ``lose_replies(n)``, it forwards the next ``n`` script calls (``EVALSHA`` /
``EVAL``) to Redis, waits for Redis's reply - so the script really ran - then drops that
reply and closes the client's connection: the client sees a broken connection after
Redis executed its write, as after a network cut at the worst moment.
"""

from __future__ import annotations

import asyncio
import contextlib


class LostReplyProxy:
    """Proxy 127.0.0.1:port -> 127.0.0.1:target_port; see the module docstring."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.lost = 0
        self._armed = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_replies(self, n: int = 1) -> None:
        """Lose the replies of the next ``n`` script calls (after Redis ran them)."""
        self._armed += n

    def heal(self) -> None:
        """Lose no more replies (the network is back)."""
        self._armed = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        sreader, swriter = await asyncio.open_connection("127.0.0.1", self.target_port)
        script_call = asyncio.Event()

        async def upstream() -> None:
            while data := await creader.read(65536):
                if self._armed and (b"EVALSHA" in data.upper() or b"\r\nEVAL\r\n" in data.upper()):
                    script_call.set()
                swriter.write(data)
                await swriter.drain()

        async def downstream() -> None:
            while data := await sreader.read(65536):
                if script_call.is_set():
                    script_call.clear()
                    if not data.startswith(b"-NOSCRIPT") and self._armed:
                        self._armed -= 1
                        self.lost += 1
                        return  # Redis ran it; the client never hears so
                cwriter.write(data)
                await cwriter.drain()

        up = asyncio.create_task(upstream())
        down = asyncio.create_task(downstream())
        try:
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (up, down):
                t.cancel()
            for w in (cwriter, swriter):
                w.close()
            self._tasks.discard(task)
