"""Fixtures of the in-process module's unit tests: a fake clock (the public
:class:`antifragile.testing.FakeClock`) and a private Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from antifragile.stack.processes import ServerProcess, free_port, start_redis
from antifragile.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock at t=1000 s."""
    return FakeClock()


class RestartableRedis:
    """A real redis-server on a fixed port that a test can stop and start again."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.server: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.server = start_redis(self.port, log_path=self.log_dir / "redis.log")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    """A private Redis for this test (the test may stop and restart it)."""
    redis = RestartableRedis(tmp_path)
    redis.start()
    yield redis
    redis.stop()
