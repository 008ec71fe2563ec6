"""Errors shown to users: one clear line each."""

from __future__ import annotations

from pydantic import ValidationError

CREDENTIAL_ERROR = "credential_in_url"
"""Pydantic error type of a value refused for carrying a credential: its input is never shown."""

TARGET_ERROR = "bad_target"
"""Pydantic error type of a malformed probe URL or action: its input is never shown either
(a mistyped URL, ``redis//:PASSWORD@host``, escapes the credential check but is still one)."""


class AntifragileError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(AntifragileError):
    """Bad configuration or input; the CLI exits 2 with this message."""


def describe_validation_error(
    exc: ValidationError, hide_input_at: tuple[tuple[str, ...], ...] = ()
) -> str:
    """Render a pydantic error as one line naming the field and the bad value.

    Args:
        exc: The error.
        hide_input_at: Field paths (prefixes of an error's location) whose values may hold
            secrets: their errors name the field, never the value. A ``credential_in_url``
            error never shows its value either.
    """
    parts = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        field = ".".join(loc) or "input"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("extra_forbidden",):
            parts.append(f"unknown field {field!r}")
            continue
        if err["type"] in (CREDENTIAL_ERROR, TARGET_ERROR) or any(
            loc[: len(prefix)] == prefix for prefix in hide_input_at
        ):
            parts.append(f"{field}: {msg}")  # never echo a credential
            continue
        value = err.get("input")
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        parts.append(f"{field}: {msg} (got {shown})")
    return "; ".join(parts)
