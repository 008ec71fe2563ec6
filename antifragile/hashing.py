"""Constant-time checks: the constitutional hash, and signed approvals.

The constitutional hash:
Constitutional hash checks, in constant time, and the message of a mismatch.

Signed approvals:
Signed approvals: an HMAC-SHA256 over one decision, so an approver's name is not self-asserted.

Without keys in the worker policy an approver's name is advisory: anyone who can signal a
workflow can claim any name. When ``recovery.approvers`` gives an approver a key
(``{NAME: {key_env: VAR}}``), a decision by that name must carry a signature made with the
same key, and the worker checks it (in an activity, never in workflow code) in constant time.

The signed message binds every field a replay could change: the workflow id and the id of
its first run (so a signature for one recovery of ``recovery-db`` cannot approve the next
one, which reuses the workflow id), the decision, the approver and the signing time. A
signature is accepted only within ``window_s`` of its signing time; the workflow remembers
the signatures it has accepted, so each is usable once.

Format (version 1), UTF-8, fields joined by newlines::

    antifragile-approval-v1
    {workflow_id}
    {first_run_id}
    {decision}          # "approved" | "rejected"
    {approver}
    {signed_at}         # UTC, ISO 8601 with seconds and "+00:00"

The signature is the lowercase hex HMAC-SHA256 of that message (RFC 2104 / FIPS 198-1).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime


def hash_matches(given: str, expected: str) -> bool:
    """Compare two constitutional hashes in constant time (case-insensitive hex)."""
    return hmac.compare_digest(given.strip().lower().encode(), expected.strip().lower().encode())


def redact_hash(value: str) -> str:
    """Show at most the first 8 hex digits of a hash, so logs never carry it whole.

    Only ever for a hash the caller sent (it is in the request already); never for the
    worker's own, which no message shows any part of (see :func:`mismatch_message`).
    """
    return value[:8] + ("…" if len(value) > 8 else "")


def mismatch_message(given: str) -> str:
    """The one message for a hash that does not match the worker's.

    It is built from the request's hash alone, so no part of the expected value can reach
    an error, a log or a workflow history: not a prefix, not its length, not whether the
    request's hash shares digits with it.

    Args:
        given: The hash the request carried.

    Returns:
        ``constitutional hash mismatch: got 01234567…; …`` (one line).
    """
    return (
        f"constitutional hash mismatch: got {redact_hash(given.strip())}; "
        "it is not the hash this worker is configured with (ANTIFRAGILE_CONSTITUTIONAL_HASH)"
    )


# --- signed approvals ---


SIGNATURE_VERSION = "antifragile-approval-v1"
"""First line of every signed message; a new format gets a new version line."""

DEFAULT_WINDOW_S = 300.0
"""How long a signature is accepted after (and before, for clock skew) its signing time, s."""

APPROVER_KEY_ENV = "ANTIFRAGILE_APPROVER_KEY"
"""Environment variable the CLI reads the approver's signing key from."""

MIN_KEY_BYTES = 16
"""Shortest key accepted (128 bits): shorter keys are refused, not silently weak."""


def _canonical_time(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("signed_at must be timezone-aware")
    return at.astimezone(UTC).replace(microsecond=0).isoformat()


def signing_message(
    *, workflow_id: str, first_run_id: str, decision: str, approver: str, signed_at: datetime
) -> bytes:
    """The exact bytes that are signed for one decision.

    Args:
        workflow_id: Id of the workflow the decision is for.
        first_run_id: Id of its first run (stable across continue-as-new).
        decision: ``"approved"`` or ``"rejected"``.
        approver: The approver's name as sent in the signal.
        signed_at: When it was signed; timezone-aware, truncated to whole seconds.

    Raises:
        ValueError: ``signed_at`` is naive, or a field contains a newline.
    """
    fields = [workflow_id, first_run_id, decision, approver]
    if any("\n" in f for f in fields):
        raise ValueError("signed fields must not contain newlines")
    return "\n".join([SIGNATURE_VERSION, *fields, _canonical_time(signed_at)]).encode()


def key_from_env(text: str) -> bytes:
    """An approver key as read from an environment variable, the same way on both sides.

    Surrounding whitespace is dropped: a key read from a file usually ends with a newline
    on one side (``KEY=$(cat file)`` strips it, an env file or a mounted secret may not),
    and a signature must not depend on how each side loaded the same key.
    """
    return text.strip().encode()


def check_key(key: bytes) -> bytes:
    """Return ``key`` if it is long enough to sign with.

    Raises:
        ValueError: shorter than ``MIN_KEY_BYTES``.
    """
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"an approver key must be at least {MIN_KEY_BYTES} bytes")
    return key


def sign_decision(
    key: bytes,
    *,
    workflow_id: str,
    first_run_id: str,
    decision: str,
    approver: str,
    signed_at: datetime,
) -> str:
    """Sign one decision; returns the lowercase hex HMAC-SHA256 (64 characters).

    Raises:
        ValueError: the key is too short, or see ``signing_message``.
    """
    message = signing_message(
        workflow_id=workflow_id,
        first_run_id=first_run_id,
        decision=decision,
        approver=approver,
        signed_at=signed_at,
    )
    return hmac.new(check_key(key), message, hashlib.sha256).hexdigest()


def verify_decision(
    key: bytes,
    signature: str,
    *,
    workflow_id: str,
    first_run_id: str,
    decision: str,
    approver: str,
    signed_at: datetime | None,
    now: datetime,
    window_s: float = DEFAULT_WINDOW_S,
) -> str | None:
    """Check a signed decision.

    Args:
        key: The approver's key, from the worker's environment.
        signature: Hex signature sent with the decision ("" when unsigned).
        workflow_id: Id of the workflow that received the decision.
        first_run_id: Id of that workflow's first run.
        decision: ``"approved"`` or ``"rejected"``.
        approver: The name the decision was sent under.
        signed_at: The signing time sent with the decision.
        now: The checker's current time (timezone-aware).
        window_s: Accepted distance between ``signed_at`` and ``now``, seconds.

    Returns:
        None when the signature is valid, else a one-line reason (never showing the key
        or the expected signature).
    """
    if not signature or signed_at is None:
        return f"{approver!r} must sign decisions (set {APPROVER_KEY_ENV})"
    if signed_at.tzinfo is None:
        return "signature time has no timezone"
    skew = abs((now - signed_at).total_seconds())
    # Compare exactly at the boundary: a signature exactly window_s old is still accepted.
    if skew > window_s:
        return f"signature is {skew:.0f}s from the worker's clock (window {window_s:.0f}s)"
    try:
        expected = sign_decision(
            key,
            workflow_id=workflow_id,
            first_run_id=first_run_id,
            decision=decision,
            approver=approver,
            signed_at=signed_at,
        )
    except ValueError as exc:
        return str(exc)
    if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
        return "signature does not match (wrong key, or signed for another decision)"
    return None


def signature_digest(signature: str) -> str:
    """A short, non-secret identifier of a signature, recorded to make each usable once."""
    return hashlib.sha256(signature.strip().lower().encode()).hexdigest()[:32]
