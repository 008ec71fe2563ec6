"""The public API is a contract: this pins it (as sdk-python does)."""

from __future__ import annotations

import subprocess
import sys

import antifragile

CONTRACT = {
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
}


def test_all_lists_exactly_the_public_names() -> None:
    assert set(antifragile.__all__) == CONTRACT
    assert set(antifragile._EXPORTS) == CONTRACT, "every public name must be loadable"


def test_every_public_name_resolves_and_has_a_docstring() -> None:
    for name in antifragile.__all__:
        value = getattr(antifragile, name)
        assert value.__doc__, f"{name} has no docstring"


def test_unknown_names_raise_attribute_error() -> None:
    try:
        antifragile.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_the_package_loads_no_network_client() -> None:
    code = (
        "import sys, antifragile; print('redis' in sys.modules, 'temporalio.client' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
