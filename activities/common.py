"""Activities shared by recovery and chaos: hash validation, approver check, probes."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from antifragile.hashing import hash_matches, redact_hash
from antifragile.models.recovery import (
    AuthorizeApproverInput,
    AuthorizeApproverResult,
    ProbeInput,
    ProbeResult,
    ValidateHashInput,
    ValidateHashResult,
)
from antifragile.policy import WorkerPolicy
from antifragile.probes import probe
from antifragile.settings import Settings

HASH_MISMATCH_ERROR = "ConstitutionalHashMismatch"
"""ApplicationError type of a hash mismatch; workflows treat it as final."""


class CommonActivities:
    """Activities that read the worker's settings and policy (never the request's)."""

    def __init__(self, settings: Settings, policy: WorkerPolicy) -> None:
        self._settings = settings
        self._policy = policy

    @activity.defn(name="validate_constitutional_hash")
    async def validate_constitutional_hash(self, data: ValidateHashInput) -> ValidateHashResult:
        """Compare the request's hash to the worker's in constant time.

        Raises:
            ApplicationError: non-retryable, on mismatch; shows at most 8 hex digits.
        """
        if not hash_matches(data.constitutional_hash, self._settings.constitutional_hash):
            raise ApplicationError(
                f"constitutional hash mismatch: got {redact_hash(data.constitutional_hash)}, "
                f"worker expects {redact_hash(self._settings.constitutional_hash)}",
                type=HASH_MISMATCH_ERROR,
                non_retryable=True,
            )
        return ValidateHashResult(valid=True)

    @activity.defn(name="authorize_approver")
    async def authorize_approver(self, data: AuthorizeApproverInput) -> AuthorizeApproverResult:
        """Allow a named approver unless the policy lists approvers and this is not one."""
        allowed = self._policy.recovery.approvers
        name = data.approver.strip()
        if not name:
            return AuthorizeApproverResult(allowed=False, reason="an approver must be named")
        if allowed and name not in allowed:
            return AuthorizeApproverResult(
                allowed=False, reason=f"{name!r} is not an approver in the worker policy"
            )
        return AuthorizeApproverResult(allowed=True)

    @activity.defn(name="probe_service")
    async def probe_service(self, data: ProbeInput) -> ProbeResult:
        """Probe a service; unhealthy is a result, not an error."""
        outcome = await probe(data.url, data.timeout_s)
        return ProbeResult(
            healthy=outcome.healthy, detail=outcome.detail, latency_ms=outcome.latency_ms
        )
