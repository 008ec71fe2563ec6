"""Errors shown to users: one clear line each."""

from __future__ import annotations

from pydantic import ValidationError

CREDENTIAL_ERROR = "credential_in_url"
"""Pydantic error type of a value refused for carrying a credential: its input is never shown."""


class AntifragileError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(AntifragileError):
    """Bad configuration or input; the CLI exits 2 with this message."""


def describe_validation_error(exc: ValidationError) -> str:
    """Render a pydantic error as one line naming the field and the bad value."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "input"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("extra_forbidden",):
            parts.append(f"unknown field {field!r}")
            continue
        if err["type"] == CREDENTIAL_ERROR:
            parts.append(f"{field}: {msg}")  # never echo the credential
            continue
        value = err.get("input")
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        parts.append(f"{field}: {msg} (got {shown})")
    return "; ".join(parts)
