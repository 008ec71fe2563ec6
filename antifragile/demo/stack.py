"""The Temporal and Redis the demo runs on: used when running, started when not."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from antifragile.constants import DEMO_TASK_QUEUE
from antifragile.demo.last_act import DEMO_HARVEST_GRACE_S, DEMO_TRAFFIC_WINDOW_S
from antifragile.errors import ConfigError
from antifragile.settings import Settings
from antifragile.stack.devstack import DevStack
from antifragile.stack.processes import ServerProcess


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
    temporal_address: str = ""
    redis_url: str = ""
    ui_url: str = ""
    dev: DevStack = field(init=False)

    def __post_init__(self) -> None:
        o = self.options
        self.dev = DevStack(o.port, o.ui_port, o.redis_port, o.data_dir, o.redis_url)

    @property
    def started(self) -> list[ServerProcess]:
        """The servers the demo started (stopped again by :meth:`stop`)."""
        return self.dev.started

    def start(self) -> str:
        """Use what runs, start what does not; a sentence saying which."""
        o = self.options
        notes = self.dev.start_missing(temporal=not o.temporal_address)
        if o.temporal_address:
            notes.insert(0, f"Temporal {o.temporal_address} (configured)")
        self.temporal_address = o.temporal_address or self.dev.temporal_address
        self.ui_url = o.ui_url or self.dev.ui_url
        self.redis_url = self.dev.effective_redis_url
        return ", ".join(notes)

    def settings(self, base: Settings) -> Settings:
        """``base`` pointed at this stack and the demo's task queue, with short windows.

        The demo's runtime and worker share these settings, so they agree on the traffic
        window (:data:`~antifragile.demo.last_act.DEMO_TRAFFIC_WINDOW_S`, 2 s, not a
        fleet's 60 s) and the worker harvests each one a grace of 1 s after it ends.
        """
        return base.model_copy(
            update={
                "traffic_window_s": DEMO_TRAFFIC_WINDOW_S,
                "harvest_grace_s": DEMO_HARVEST_GRACE_S,
                "temporal_address": self.temporal_address,
                "redis_url": self.redis_url,
                "ui_url": self.ui_url,
                "task_queue": DEMO_TASK_QUEUE,
            }
        )

    def stop(self) -> None:
        """Stop what the demo started, newest first."""
        self.dev.stop_servers()
