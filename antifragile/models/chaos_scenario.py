"""What a chaos experiment does: :class:`ChaosScenario`, the contract.

A scenario is validated completely before anything starts; an invalid one raises
:class:`~antifragile.errors.ConfigError` with one line naming the field and the bad
value. Files (YAML or JSON) and the published JSON Schema are
:mod:`antifragile.chaos.scenario`'s.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from antifragile.errors import ConfigError, describe_validation_error
from antifragile.models.common import ProbeURL, ServiceName, StrictModel
from antifragile.settings import DEFAULT_CONSTITUTIONAL_HASH

HARD_MAX_DURATION_S = 300.0
"""No experiment runs longer than this, whatever the scenario or policy says."""

MEMORY_CAP_MB = 256
"""MEMORY exhaustion holds ``resource_level`` × this many MiB at most, per process."""


class ChaosType(StrEnum):
    """The kind of fault an experiment injects."""

    LATENCY = "LATENCY"
    ERROR = "ERROR"
    CIRCUIT_BREAKER = "CIRCUIT_BREAKER"
    RESOURCE_EXHAUSTION = "RESOURCE_EXHAUSTION"
    NETWORK_PARTITION = "NETWORK_PARTITION"
    TIMEOUT = "TIMEOUT"


class ErrorKind(StrEnum):
    """Which exception an ERROR fault raises at the call site."""

    RUNTIME = "runtime"
    """``RuntimeError``."""
    CONNECTION = "connection"
    """``ConnectionError``."""
    TIMEOUT = "timeout"
    """``TimeoutError``."""
    OS = "os"
    """``OSError``."""
    VALUE = "value"
    """``ValueError``."""


class ResourceType(StrEnum):
    """What a RESOURCE_EXHAUSTION fault holds while it is active."""

    CONNECTIONS = "CONNECTIONS"
    """A share of the guard's concurrency slots."""
    MEMORY = "MEMORY"
    """``resource_level`` × :data:`MEMORY_CAP_MB` MiB of memory."""
    CPU = "CPU"
    """A thread that burns ``resource_level`` of one CPU."""


class ChaosScenario(StrictModel):
    """One chaos experiment, as written in a YAML/JSON file or built by the CLI.

    Attributes:
        name: Experiment name; part of the workflow id ``chaos-{name}-{short id}``.
        description: Free text shown in the UI. Default empty.
        chaos_type: The fault to inject.
        target: The guarded dependency (guard name) the experiment is about.
        blast_radius: Every guard the fault may touch. The target is always added;
            default: only the target. Each must be allowed by the worker policy.
        latency_ms: LATENCY: delay added to each affected call. Default 100.
        jitter_ms: LATENCY: uniform ± spread around ``latency_ms``. Default 0.
        error_rate: ERROR: share of affected calls that raise, 0..1. Default 1.0.
        error_kind: ERROR: which exception is raised. Default ``runtime``.
        timeout_ms: TIMEOUT: how long a call hangs when its guard has no timeout of
            its own (with one, the call hangs until the guard's timeout). Default 30000.
        resource_type: RESOURCE_EXHAUSTION: CONNECTIONS, MEMORY or CPU. Required then.
        resource_level: RESOURCE_EXHAUSTION: share of the resource held, 0..1. Default 0.5.
        injection_rate: Share of calls the fault affects, 0..1. Default 1.0.
        instance_fraction: Share of instances (processes) affected, 0..1; chosen by a
            stable hash of experiment and instance. Default: all instances.
        instance_count: Exactly this many instances, chosen among those the fault
            plane knows. Default: all instances. Exclusive with ``instance_fraction``.
        duration_s: How long the fault stays injected, seconds. Default 30.
        max_duration_s: Cap on ``duration_s``; the worker policy's cap and 300 s
            apply too. A longer duration is capped with a warning. Default 300.
        abort_below_health: The health guard: when the health score of a process that
            guards a target (its aggregate over all its breakers) falls below this, the
            experiment aborts and removes the fault. Default 0.5.
        steady_state_probe: Optional URL (tcp/http(s)/redis) that must be healthy
            before injection and is checked while running. Default none.
        recovery_timeout_s: How long VERIFYING_RECOVERY waits for health after the
            fault is removed. Default 60.
        require_hash_validation: Check the constitutional hash before injection and
            before each lease renewal. Default true.
        constitutional_hash: Must match the worker's. Default the project default.
        require_approval: Wait for an ``approve`` signal before injecting. Default false.
        dry_run: Run every phase but write no fault lease. Default false.
        allow_unguarded: Inject even when no live process of the fleet registry guards the
            target (e.g. a service about to start). Default false: refused at injection.
        requested_by: Who asked for the experiment. Default empty.
    """

    name: ServiceName
    description: str = Field(default="", max_length=2000)
    chaos_type: ChaosType
    target: ServiceName
    blast_radius: list[ServiceName] = Field(default_factory=list, max_length=100)
    latency_ms: int = Field(default=100, ge=0, le=600_000)
    jitter_ms: int = Field(default=0, ge=0, le=600_000)
    error_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    error_kind: ErrorKind = ErrorKind.RUNTIME
    timeout_ms: int = Field(default=30_000, gt=0, le=600_000)
    resource_type: ResourceType | None = None
    resource_level: float = Field(default=0.5, ge=0.0, le=1.0)
    injection_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    instance_fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    instance_count: int | None = Field(default=None, ge=1, le=100_000)
    duration_s: float = Field(default=30.0, gt=0.0, le=86_400.0)
    max_duration_s: float = Field(default=HARD_MAX_DURATION_S, gt=0.0, le=86_400.0)
    abort_below_health: float = Field(default=0.5, ge=0.0, le=1.0)
    steady_state_probe: ProbeURL | None = None
    recovery_timeout_s: float = Field(default=60.0, ge=0.0, le=3600.0)
    require_hash_validation: bool = True
    constitutional_hash: str = DEFAULT_CONSTITUTIONAL_HASH
    require_approval: bool = False
    dry_run: bool = False
    allow_unguarded: bool = False
    requested_by: str = Field(default="", max_length=200)

    @field_validator("chaos_type", "resource_type", mode="before")
    @classmethod
    def _upper_enum(cls, value: Any) -> Any:
        # Files and flags say "latency" as often as "LATENCY": accept both.
        return value.upper() if isinstance(value, str) else value

    @field_validator("blast_radius")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _per_type(self) -> ChaosScenario:
        if self.target not in self.blast_radius:
            self.blast_radius.insert(0, self.target)
        if self.chaos_type is ChaosType.RESOURCE_EXHAUSTION and self.resource_type is None:
            raise ValueError(
                "resource_type: required for RESOURCE_EXHAUSTION (CONNECTIONS, MEMORY or CPU)"
            )
        if self.instance_fraction is not None and self.instance_count is not None:
            raise ValueError("instance_fraction and instance_count: give at most one of them")
        return self

    @property
    def instances_description(self) -> str:
        """Human words for the instance selection."""
        if self.instance_count is not None:
            return f"{self.instance_count} instance(s)"
        if self.instance_fraction is not None:
            return f"{self.instance_fraction:.0%} of instances"
        return "all instances"

    def parameters_description(self) -> str:
        """The type's parameters as one short phrase (UI summaries, CLI output)."""
        t = self.chaos_type
        if t is ChaosType.LATENCY:
            spread = f" ± {self.jitter_ms}" if self.jitter_ms else ""
            text = f"+{self.latency_ms}{spread} ms"
        elif t is ChaosType.ERROR:
            text = f"{self.error_kind.value} errors at rate {self.error_rate:g}"
        elif t is ChaosType.TIMEOUT:
            text = f"hang until the guard's timeout (else {self.timeout_ms} ms)"
        elif t is ChaosType.RESOURCE_EXHAUSTION:
            kind = self.resource_type.value if self.resource_type else "?"
            text = f"hold {self.resource_level:.0%} of {kind}"
        elif t is ChaosType.NETWORK_PARTITION:
            text = "ConnectionError at once"
        else:
            text = "breaker forced open"
        if self.injection_rate < 1.0:
            text += f", {self.injection_rate:.0%} of calls"
        return text


def parse_scenario(data: Any, source: str = "scenario") -> ChaosScenario:
    """Validate a mapping into a scenario.

    Raises:
        ConfigError: one line naming the bad field and value.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of scenario fields")
    try:
        return ChaosScenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None
