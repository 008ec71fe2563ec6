"""Model pieces shared by recovery, chaos and orchestration."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
PROBE_SCHEMES = ("tcp", "http", "https", "redis")


def _check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            "must be 1-100 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def _check_probe(value: str) -> str:
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in PROBE_SCHEMES or not rest:
        raise ValueError("must be a URL with scheme tcp://, http://, https:// or redis://")
    if scheme == "tcp":
        host, colon, port = rest.rstrip("/").rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("a tcp probe must be tcp://host:port")
    return value


ServiceName = Annotated[str, AfterValidator(_check_name)]
"""A service or dependency name: it becomes part of workflow ids and Redis keys."""

ProbeURL = Annotated[str, AfterValidator(_check_probe)]
"""How to tell a service is healthy: ``tcp://h:p``, ``http(s)://…`` or ``redis://h:p/db``."""


class StrictModel(BaseModel):
    """Base of every contract model: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class Decision(StrEnum):
    """What a person decided about a gated step."""

    APPROVED = "approved"
    REJECTED = "rejected"
    REFUSED = "refused"
    """The decision came from someone the policy does not allow; it had no effect."""
    IGNORED = "ignored"
    """Nothing awaited a decision when it arrived; it had no effect."""


class ApprovalSignal(StrictModel):
    """Payload of the ``approve`` and ``reject`` signals.

    Attributes:
        approver: Who decides. Required, non-empty.
        note: Free text kept with the decision.
        signature: Hex HMAC-SHA256 of the decision (``antifragile.approvals``); "" when
            unsigned. Required when the policy gives this approver a key.
        signed_at: When the decision was signed (UTC); None when unsigned.
    """

    approver: str = Field(min_length=1, max_length=200)
    note: str = Field(default="", max_length=2000)
    signature: str = Field(default="", max_length=128)
    signed_at: datetime | None = None


class ApprovalRecord(StrictModel):
    """One decision as recorded in a workflow: who, what, when, and whether it counted."""

    approver: str
    decision: Decision
    note: str = ""
    at: datetime
    reason: str = ""
    """Why a decision was refused or ignored; empty when it took effect."""


class HealthChangedSignal(StrictModel):
    """Payload of ``health_changed``: a process reported a dependency's health.

    Attributes:
        service: The dependency (breaker) name.
        healthy: True when the breaker closed again / the service looks healthy.
        score: Health score 0.0-1.0 of the reporting process, if known.
        status: Reported status name (HEALTHY, DEGRADED, CRITICAL, UNKNOWN), if known.
        source: Which process reported it (instance id).
    """

    service: str
    healthy: bool
    score: float | None = Field(default=None, ge=0.0, le=1.0)
    status: str | None = None
    source: str = ""
