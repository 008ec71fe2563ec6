"""Constitutional hash checks, in constant time."""

from __future__ import annotations

import hmac


def hash_matches(given: str, expected: str) -> bool:
    """Compare two constitutional hashes in constant time (case-insensitive hex)."""
    return hmac.compare_digest(given.strip().lower().encode(), expected.strip().lower().encode())


def redact_hash(value: str) -> str:
    """Show at most the first 8 hex digits of a hash, so logs never carry it whole."""
    return value[:8] + ("…" if len(value) > 8 else "")
