"""antifragile: durable recovery and chaos engine for Python services, built on Temporal.

The public API is the names in ``__all__``; they are loaded on first use so that
``import antifragile`` (and workflow code importing its deterministic submodules) stays
light and free of network clients.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from antifragile.inprocess.breaker import CircuitBreaker
    from antifragile.inprocess.breaker_config import CircuitBreakerConfig
    from antifragile.inprocess.breaker_state import CircuitOpenError, CircuitState
    from antifragile.inprocess.guard import Guard
    from antifragile.inprocess.health import (
        HealthAggregator,
        HealthAggregatorConfig,
        SystemHealthReport,
    )
    from antifragile.inprocess.health_score import SystemHealthStatus
    from antifragile.inprocess.metering import MeteringIntegration, UsageEvent
    from antifragile.inprocess.runtime import Runtime
    from antifragile.models.recovery import (
        RecoveryPolicy,
        RecoveryRequest,
        RecoveryResult,
        RecoveryState,
        RecoveryStatus,
        RecoveryStrategy,
    )
    from antifragile.policy import WorkerPolicy
    from antifragile.settings import Settings

_EXPORTS: dict[str, str] = {
    "CircuitBreaker": "antifragile.inprocess.breaker",
    "CircuitBreakerConfig": "antifragile.inprocess.breaker_config",
    "CircuitOpenError": "antifragile.inprocess.breaker_state",
    "CircuitState": "antifragile.inprocess.breaker_state",
    "Guard": "antifragile.inprocess.guard",
    "HealthAggregator": "antifragile.inprocess.health",
    "HealthAggregatorConfig": "antifragile.inprocess.health",
    "SystemHealthReport": "antifragile.inprocess.health",
    "SystemHealthStatus": "antifragile.inprocess.health_score",
    "MeteringIntegration": "antifragile.inprocess.metering",
    "UsageEvent": "antifragile.inprocess.metering",
    "RecoveryPolicy": "antifragile.models.recovery",
    "RecoveryRequest": "antifragile.models.recovery",
    "RecoveryResult": "antifragile.models.recovery",
    "RecoveryState": "antifragile.models.recovery",
    "RecoveryStatus": "antifragile.models.recovery",
    "RecoveryStrategy": "antifragile.models.recovery",
    "Runtime": "antifragile.inprocess.runtime",
    "Settings": "antifragile.settings",
    "WorkerPolicy": "antifragile.policy",
}

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitOpenError",
    "CircuitState",
    "Guard",
    "HealthAggregator",
    "HealthAggregatorConfig",
    "MeteringIntegration",
    "RecoveryPolicy",
    "RecoveryRequest",
    "RecoveryResult",
    "RecoveryState",
    "RecoveryStatus",
    "RecoveryStrategy",
    "Runtime",
    "Settings",
    "SystemHealthReport",
    "SystemHealthStatus",
    "UsageEvent",
    "WorkerPolicy",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'antifragile' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
