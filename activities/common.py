"""Activities shared by recovery and chaos: hash validation, approver check, probes."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities._heartbeat import heartbeating
from antifragile.constants import (
    ACTIVITY_AUTHORIZE_APPROVER,
    ACTIVITY_PROBE_SERVICE,
    ACTIVITY_VALIDATE_HASH,
)
from antifragile.hashing import (
    MIN_KEY_BYTES,
    hash_matches,
    key_from_env,
    mismatch_message,
    signature_digest,
    verify_decision,
)
from antifragile.models.recovery import (
    AuthorizeApproverInput,
    AuthorizeApproverResult,
    ProbeInput,
    ProbeResult,
    ValidateHashInput,
    ValidateHashResult,
)
from antifragile.policy import WorkerPolicy
from antifragile.recovery.named_targets import NamedTargetError, resolve_probe
from antifragile.recovery.probes import probe
from antifragile.settings import Settings

NAMED_TARGET_ERROR = "NamedTargetError"
"""ApplicationError type of a probe or webhook the worker policy cannot resolve or refuses."""

HASH_MISMATCH_ERROR = "ConstitutionalHashMismatch"
"""ApplicationError type of a hash mismatch; workflows treat it as final."""


class CommonActivities:
    """Activities that read the worker's settings and policy (never the request's)."""

    def __init__(self, settings: Settings, policy: WorkerPolicy) -> None:
        self._settings = settings
        self._policy = policy

    @activity.defn(name=ACTIVITY_VALIDATE_HASH)
    async def validate_constitutional_hash(self, data: ValidateHashInput) -> ValidateHashResult:
        """Compare the request's hash to the worker's in constant time.

        Raises:
            ApplicationError: non-retryable, on mismatch; shows no part of the worker's hash.
        """
        if not hash_matches(data.constitutional_hash, self._settings.constitutional_hash):
            raise ApplicationError(
                mismatch_message(data.constitutional_hash),
                type=HASH_MISMATCH_ERROR,
                non_retryable=True,
            )
        return ValidateHashResult(valid=True)

    @activity.defn(name=ACTIVITY_AUTHORIZE_APPROVER)
    async def authorize_approver(self, data: AuthorizeApproverInput) -> AuthorizeApproverResult:
        """Allow a decision if the policy allows its approver and, when keyed, its signature.

        An approver the policy lists with ``key_env`` must sign (``antifragile.hashing``):
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
        key = key_from_env(os.environ.get(key_env, ""))
        if not key:
            # The operator named a key the worker does not have: refuse, never fall back.
            return AuthorizeApproverResult(
                allowed=False, reason=f"the worker has no key for {name!r} (policy key_env)"
            )
        if len(key) < MIN_KEY_BYTES:
            # A weak key is the operator's fault, not the approver's: say so, refuse.
            return AuthorizeApproverResult(
                allowed=False,
                reason=f"the worker's key for {name!r} (${key_env}) is shorter than "
                f"{MIN_KEY_BYTES} bytes: fix the worker's environment",
            )
        reason = verify_decision(
            key,
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

    @activity.defn(name=ACTIVITY_PROBE_SERVICE)
    async def probe_service(self, data: ProbeInput) -> ProbeResult:
        """Probe a service; unhealthy is a result, not an error. Heartbeats meanwhile.

        ``probe:NAME`` is resolved here, from the worker policy and environment
        (``antifragile.recovery.named_targets``); the resolved URL never leaves this function.

        Raises:
            ApplicationError: non-retryable, ``NamedTargetError``: an unknown name, a
                missing environment variable, or a URL with a credential in it.
        """
        try:
            target = resolve_probe(self._policy.recovery, data.url)
        except NamedTargetError as exc:
            raise ApplicationError(str(exc), type=NAMED_TARGET_ERROR, non_retryable=True) from None
        try:
            async with heartbeating():
                outcome = await probe(target.url, data.timeout_s)
        except Exception as exc:
            # Whatever failed, its message may quote the resolved URL: redact, drop the chain.
            message = target.redact(f"probe failed: {exc.__class__.__name__}: {exc}")
            raise ApplicationError(message, type="ProbeError") from None
        return ProbeResult(
            healthy=outcome.healthy,
            detail=target.redact(outcome.detail),
            latency_ms=outcome.latency_ms,
        )
