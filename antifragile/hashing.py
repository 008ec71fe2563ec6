"""Constitutional hash checks, in constant time, and the message of a mismatch."""

from __future__ import annotations

import hmac


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
