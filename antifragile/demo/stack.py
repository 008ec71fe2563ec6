"""The Temporal and Redis the demo runs on: used when running, started when not."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from antifragile.constants import DEMO_TASK_QUEUE
from antifragile.errors import ConfigError
from antifragile.processes import ServerProcess, port_open, start_redis, start_temporal_dev_server
from antifragile.settings import Settings


@dataclass
class DemoOptions:
    """How ``antifragile demo`` runs.

    Attributes:
        port: Temporal gRPC port of the embedded stack. Default 7233.
        ui_port: Temporal UI port. Default 8233.
        redis_port: Redis port. Default 6379.
        data_dir: Where a stack started by the demo persists. Default ``.antifragile``.
        rate: Messages per second offered to the bus. Default 5,000.
        chaos_duration_s: How long the fault stays injected. Default 8.
        step_timeout_s: Longest wait for any one step. Default 60.
        keep: Keep a stack the demo started running until Ctrl-C. Default False.
        temporal_address: An existing Temporal to use instead (no stack is started).
        redis_url: An existing Redis to use instead.
        ui_url: The UI of that existing Temporal, for the links.
    """

    port: int = 7233
    ui_port: int = 8233
    redis_port: int = 6379
    data_dir: Path = Path(".antifragile")
    rate: int = 5_000
    chaos_duration_s: float = 8.0
    step_timeout_s: float = 60.0
    keep: bool = False
    temporal_address: str | None = None
    redis_url: str | None = None
    ui_url: str | None = None

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad option."""
        for name in ("port", "ui_port", "redis_port"):
            value = getattr(self, name)
            if not 0 < value < 65536:
                raise ConfigError(f"--{name.replace('_', '-')}: not a port: {value}")
        if not 1 <= self.rate <= 200_000:
            raise ConfigError(f"--rate: must be 1..200000 messages/s, got {self.rate}")
        if not 2 <= self.chaos_duration_s <= 120:
            raise ConfigError(
                f"--chaos-duration: must be 2..120 seconds, got {self.chaos_duration_s:g}"
            )
        if self.step_timeout_s < 5:
            raise ConfigError(f"--step-timeout: at least 5 seconds, got {self.step_timeout_s:g}")


@dataclass
class DemoStack:
    """The Temporal and Redis the demo uses, and whatever it had to start for them."""

    options: DemoOptions
    started: list[ServerProcess] = field(default_factory=list)
    temporal_address: str = ""
    redis_url: str = ""
    ui_url: str = ""

    def start(self) -> str:
        """Use what runs, start what does not; a sentence saying which."""
        o = self.options
        notes = []
        if o.temporal_address:
            self.temporal_address = o.temporal_address
            self.ui_url = o.ui_url or "http://127.0.0.1:8233"
            notes.append(f"Temporal {self.temporal_address} (configured)")
        else:
            self.temporal_address = f"127.0.0.1:{o.port}"
            self.ui_url = o.ui_url or f"http://127.0.0.1:{o.ui_port}"
            if port_open("127.0.0.1", o.port):
                notes.append(f"Temporal {self.temporal_address} (already running)")
            else:
                o.data_dir.mkdir(parents=True, exist_ok=True)
                self.started.append(
                    start_temporal_dev_server(
                        o.port,
                        ui_port=o.ui_port,
                        db_file=o.data_dir / "temporal.db",
                        log_path=o.data_dir / "temporal.log",
                    )
                )
                notes.append(f"Temporal {self.temporal_address} (started, UI {self.ui_url})")
        if o.redis_url:
            self.redis_url = o.redis_url
            notes.append(f"Redis {self.redis_url} (configured)")
        else:
            self.redis_url = f"redis://127.0.0.1:{o.redis_port}/0"
            if port_open("127.0.0.1", o.redis_port):
                notes.append(f"Redis {self.redis_url} (already running)")
            else:
                try:
                    self.started.append(
                        start_redis(
                            o.redis_port,
                            data_dir=o.data_dir / "redis",
                            log_path=o.data_dir / "redis.log",
                        )
                    )
                except Exception:
                    self.stop()
                    raise
                notes.append(f"Redis {self.redis_url} (started)")
        return ", ".join(notes)

    def settings(self, base: Settings) -> Settings:
        """``base`` pointed at this stack and the demo's task queue."""
        return base.model_copy(
            update={
                "temporal_address": self.temporal_address,
                "redis_url": self.redis_url,
                "ui_url": self.ui_url,
                "task_queue": DEMO_TASK_QUEUE,
            }
        )

    def stop(self) -> None:
        """Stop what the demo started, newest first."""
        while self.started:
            self.started.pop().stop()
