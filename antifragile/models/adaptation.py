"""Contracts of audited, reversible adaptation: ``antifragile advise apply/revert``.

A dependency's ledger (``profile-{dependency}``) takes ``apply_advice`` and
``revert_config`` signals, authorizes the approver, decides the values itself and
publishes them as a config version (``antifragile.learning.config_versions``); each
request ends as one :class:`ConfigChange`, the audit record the ledger keeps.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field

from antifragile.models.common import StrictModel
from antifragile.models.learning import (
    ConfigVersion,
    DependencySettings,
    ProfileInput,
    ProfileView,
)

AUTO_BY = "auto"
"""``by`` of a change the ledger made by itself (policy ``adaptation.auto``)."""


class ChangeOutcome(StrEnum):
    """How a change request ended.

    APPLIED: a new config version was published. UNCHANGED: nothing to change (no
    live-appliable advice differs from the settings in force). REFUSED: the approver or
    the policy's bounds refused it. FAILED: Redis could not be written in time.
    """

    APPLIED = "applied"
    UNCHANGED = "unchanged"
    REFUSED = "refused"
    FAILED = "failed"


class ApplyAdviceSignal(StrictModel):
    """Payload of ``apply_advice``: apply the ledger's advice, approved by a person.

    Attributes:
        request_id: Client-chosen id; a second signal with it is answered by the first.
        approver: Who approves. Required.
        note: Why (kept with the change and the version).
        settings: Advice settings to apply (``breaker.open_duration_s``...); empty: every
            live-appliable advice that changes something.
        signature / signed_at: As :class:`~antifragile.models.common.ApprovalSignal`
            (decision ``"apply"``).
    """

    request_id: str = Field(min_length=1, max_length=200)
    approver: str = Field(min_length=1, max_length=200)
    note: str = Field(default="", max_length=2000)
    settings: list[str] = Field(default_factory=list, max_length=20)
    signature: str = Field(default="", max_length=128)
    signed_at: datetime | None = None


class RevertConfigSignal(StrictModel):
    """Payload of ``revert_config``: undo the version in force (decision ``"revert"``).

    Attributes: as :class:`ApplyAdviceSignal`, without settings.
    """

    request_id: str = Field(min_length=1, max_length=200)
    approver: str = Field(min_length=1, max_length=200)
    note: str = Field(default="", max_length=2000)
    signature: str = Field(default="", max_length=128)
    signed_at: datetime | None = None


class ConfigChange(StrictModel):
    """One change a ledger decided: the audit record of an apply or a revert.

    Attributes:
        request_id: The request's id (``auto-...`` for the ledger's own).
        action: ``"apply"`` or ``"revert"``.
        by: Who asked (``"auto"``: the ledger under policy ``adaptation.auto``).
        note: The requester's note.
        requested_at: Workflow time the request arrived.
        decided_at: Workflow time the outcome was recorded.
        outcome: See :class:`ChangeOutcome`.
        reason: Why refused, failed or unchanged; what was applied otherwise.
        version: The version published (None: none).
        previous_version: The version in force before (None: none).
        before: Settings in force before (None fields: the service's own).
        after: Settings in force after (None: nothing published).
        applied: Advice settings applied.
        not_applied: Advice setting -> why it was not applied.
    """

    request_id: str
    action: Literal["apply", "revert"]
    by: str
    note: str = ""
    requested_at: datetime
    decided_at: datetime | None = None
    outcome: ChangeOutcome
    reason: str = ""
    version: int | None = None
    previous_version: int | None = None
    before: DependencySettings | None = None
    after: DependencySettings | None = None
    applied: list[str] = Field(default_factory=list)
    not_applied: dict[str, str] = Field(default_factory=dict)


class AdaptationBand(StrictModel):
    """What the worker's policy lets a ledger apply by itself (``adaptation``).

    Attributes:
        auto: Apply in-band advice without a person. Default false.
        auto_max_step: Largest relative change per setting, ``|new - old| / old``.
        auto_min_observations: Held observations the advice must rest on.
        auto_min_step: Smallest relative change ``auto`` makes (a smaller one is left as
            it is: advice that wobbles between batches publishes no version per wobble).
            None: no minimum (results recorded before it existed replay unchanged).
        auto_known_only: ``auto`` changes only settings a config version sets (the
            value in force is known; unset, the service runs with its own value, not
            the library default the advice compares with). False in results recorded
            before it existed (they replay unchanged).
        auto_pauses_on_revert: While a person's revert is the version in force, ``auto``
            changes nothing (it would redo what the person undid); a person's next
            apply resumes it. False in results recorded before it existed.
    """

    auto: bool = False
    auto_max_step: float = Field(default=0.5, gt=0)
    auto_min_observations: int = Field(default=3, ge=1)
    auto_min_step: float | None = Field(default=None, ge=0)
    auto_known_only: bool = False
    auto_pauses_on_revert: bool = False


class ReadConfigInput(StrictModel):
    """Input of ``read_dependency_config``."""

    dependency: str = Field(min_length=1)


class ReadConfigResult(StrictModel):
    """The config version in force (None: none) and the worker's adaptation band."""

    version: ConfigVersion | None = None
    band: AdaptationBand = Field(default_factory=AdaptationBand)


class PublishConfigInput(StrictModel):
    """Input of ``publish_dependency_config``.

    Attributes:
        dependency: The guard name.
        request_id: Publishes once per id (a retried activity finds its version).
        by / why: Recorded in the version.
        settings: The settings to publish; None: revert the version in force.
    """

    dependency: str = Field(min_length=1)
    request_id: str = Field(min_length=1)
    by: str
    why: str = ""
    settings: DependencySettings | None = None


class PublishConfigResult(StrictModel):
    """What ``publish_dependency_config`` did.

    Attributes:
        refused: The policy's bounds (or nothing to revert) refused it; ``reason`` says why.
        reason: Why refused.
        version: The version published (None when refused).
        undone: For a revert, the settings of the version it undid.
    """

    refused: bool = False
    reason: str = ""
    version: ConfigVersion | None = None
    undone: DependencySettings | None = None


_NAMES = {"ConfigChange": ConfigChange}
ProfileInput.model_rebuild(_types_namespace=_NAMES)
ProfileView.model_rebuild(_types_namespace=_NAMES)
