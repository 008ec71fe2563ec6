"""Activities shared by recovery and chaos: hash validation, approver check, probes."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities._heartbeat import heartbeating
from antifragile.approvals import signature_digest, verify_decision
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
        """Allow a decision if the policy allows its approver and, when keyed, its signature.

        An approver the policy lists with ``key_env`` must sign (``antifragile.approvals``):
        the signature is checked in constant time against the key in the worker's
        environment, within ``recovery.approval_window_s`` of the worker's clock, and is
        refused if its digest is in ``used_signatures``. Without keys, names are advisory.
        """
        policy = self._policy.recovery
        name = data.approver.strip()
        if not name:
            return AuthorizeApproverResult(allowed=False, reason="an approver must be named")
        if policy.approvers and name not in policy.approvers:
            return AuthorizeApproverResult(
                allowed=False, reason=f"{name!r} is not an approver in the worker policy"
            )
        key_env = policy.approver_key_env(name)
        if key_env is None:
            return AuthorizeApproverResult(allowed=True)
        key = os.environ.get(key_env, "")
        if not key:
            # The operator named a key the worker does not have: refuse, never fall back.
            return AuthorizeApproverResult(
                allowed=False, reason=f"the worker has no key for {name!r} (policy key_env)"
            )
        reason = verify_decision(
            key.encode(),
            data.signature,
            workflow_id=data.workflow_id,
            first_run_id=data.first_run_id,
            decision=data.decision,
            approver=name,
            signed_at=data.signed_at,
            now=datetime.now(UTC),
            window_s=policy.approval_window_s,
        )
        if reason is not None:
            return AuthorizeApproverResult(allowed=False, reason=reason)
        digest = signature_digest(data.signature)
        if digest in data.used_signatures:
            return AuthorizeApproverResult(allowed=False, reason="signature already used")
        return AuthorizeApproverResult(allowed=True, signature_digest=digest)

    @activity.defn(name="probe_service")
    async def probe_service(self, data: ProbeInput) -> ProbeResult:
        """Probe a service; unhealthy is a result, not an error. Heartbeats meanwhile."""
        async with heartbeating():
            outcome = await probe(data.url, data.timeout_s)
        return ProbeResult(
            healthy=outcome.healthy, detail=outcome.detail, latency_ms=outcome.latency_ms
        )
