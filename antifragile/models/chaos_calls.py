"""Call outcomes of an experiment's target over time: what the health checks sample.

Every runtime publishes, per dependency, monotonic counters since it started counting
(``cumulative`` in the health snapshot, see :mod:`antifragile.fleet_health`). The
experiment's health-check activity returns them for the target, one
:class:`InstanceCalls` per instance; the workflow turns consecutive ones into
:class:`CallSample` records (see :func:`antifragile.chaos.journal.add_call_sample`).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, model_validator

from antifragile.models.common import StrictModel
from antifragile.models.learning import LATENCY_BUCKETS

MAX_COUNT = 2**53
"""Largest counter accepted (exact in every JSON reader; a runtime never gets there)."""


class InstanceCalls(StrictModel):
    """One instance's cumulative counters of one dependency.

    Attributes:
        instance: The publishing process.
        dependency: The guard name.
        since: When the process started counting (Unix s); another value means the
            counters restarted from 0.
        calls: Calls that reached the dependency (successes and failures).
        failures: Of those, calls that raised.
        refused: Calls the guard refused (breaker open, concurrency limit).
        latency: Cumulative latency bucket counts (``latency_bounds_ms()`` buckets: at
            most ``LATENCY_BUCKETS + 1``).

    A snapshot is written by another process: ``since`` must be finite (a NaN would not
    survive the JSON of an activity result), counts are integers in ``[0, 2**53]``
    with ``failures <= calls``, so garbage is refused here (and the snapshot's
    counters left out) rather than in the workflow.
    """

    instance: str = Field(max_length=256)
    dependency: str = Field(max_length=256)
    since: float = Field(allow_inf_nan=False)
    calls: int = Field(ge=0, le=MAX_COUNT)
    failures: int = Field(ge=0, le=MAX_COUNT)
    refused: int = Field(default=0, ge=0, le=MAX_COUNT)
    latency: list[int] = Field(default_factory=list, max_length=LATENCY_BUCKETS + 1)

    @model_validator(mode="after")
    def _consistent(self) -> InstanceCalls:
        if self.failures > self.calls:
            raise ValueError(f"failures ({self.failures}) must be <= calls ({self.calls})")
        if any(not 0 <= n <= MAX_COUNT for n in self.latency):
            raise ValueError("latency counts must be in [0, 2**53]")
        return self


class CallSample(StrictModel):
    """The target's calls at one health check, summed over instances.

    Counts are cumulative since the experiment's first sample (restarts of instances
    handled as Prometheus ``rate()`` does: a counter that went down restarted from 0),
    so a rate is the difference of two samples over their time difference, and thinning
    old samples loses resolution, never calls.

    Attributes:
        at: Workflow time of the health check.
        ok: Calls that succeeded. failed: Calls that raised. refused: Calls refused.
        p50_ms / p99_ms: Latency quantiles of the calls since the previous sample
            (nearest rank, bucket upper bound; None: no call in the interval).
        instances: Instances that published counters for the target.
    """

    at: datetime
    ok: int = 0
    failed: int = 0
    refused: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    instances: int = 0
