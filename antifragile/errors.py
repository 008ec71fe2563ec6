"""Errors shown to users: one clear line each."""

from __future__ import annotations

from pydantic import ValidationError


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
        value = err.get("input")
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        parts.append(f"{field}: {msg} (got {shown})")
    return "; ".join(parts)
