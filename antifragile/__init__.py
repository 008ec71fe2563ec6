"""antifragile: durable recovery and chaos engine for Python services, built on Temporal.

The public API is the names in ``__all__``; they are loaded on first use so that
``import antifragile`` (and workflow code importing its deterministic submodules) stays
light and free of network clients.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from antifragile.breaker import (
        CircuitBreaker,
        CircuitBreakerConfig,
        CircuitOpenError,
        CircuitState,
    )
    from antifragile.guard import Guard
    from antifragile.health import (
        HealthAggregator,
        HealthAggregatorConfig,
        SystemHealthReport,
        SystemHealthStatus,
    )
    from antifragile.metering import MeteringIntegration, UsageEvent
    from antifragile.models.recovery import (
        RecoveryPolicy,
        RecoveryRequest,
        RecoveryResult,
        RecoveryState,
        RecoveryStatus,
        RecoveryStrategy,
    )
    from antifragile.policy import WorkerPolicy
    from antifragile.runtime import Runtime
    from antifragile.settings import Settings

_EXPORTS: dict[str, str] = {
    "CircuitBreaker": "antifragile.breaker",
    "CircuitBreakerConfig": "antifragile.breaker",
    "CircuitOpenError": "antifragile.breaker",
    "CircuitState": "antifragile.breaker",
    "Guard": "antifragile.guard",
    "HealthAggregator": "antifragile.health",
    "HealthAggregatorConfig": "antifragile.health",
    "SystemHealthReport": "antifragile.health",
    "SystemHealthStatus": "antifragile.health",
    "MeteringIntegration": "antifragile.metering",
    "UsageEvent": "antifragile.metering",
    "RecoveryPolicy": "antifragile.models.recovery",
    "RecoveryRequest": "antifragile.models.recovery",
    "RecoveryResult": "antifragile.models.recovery",
    "RecoveryState": "antifragile.models.recovery",
    "RecoveryStatus": "antifragile.models.recovery",
    "RecoveryStrategy": "antifragile.models.recovery",
    "Runtime": "antifragile.runtime",
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
