"""Guarded clients: httpx, redis, aiohttp and grpc.aio calls through a runtime's guards.

Each adapter is a thin layer over the client library's own extension point and sends
every call through ``runtime.guard(target)``, so the target's circuit breaker, the chaos
faults installed for it and usage metering apply with no ``async with guard`` at the
call sites:

- :func:`antifragile.integrations.httpx.guarded_client`: an
  ``httpx.AsyncClient`` whose transport is wrapped (targets may be chosen per host).
- :func:`antifragile.integrations.redis.guarded_redis`: a
  ``redis.asyncio.Redis`` whose commands (a pipeline's ``execute`` as one call) are
  guarded.
- :func:`antifragile.integrations.aiohttp.guarded_session`: an
  ``aiohttp.ClientSession`` with a client middleware.
- :func:`antifragile.integrations.grpc.guarded_channel`: a ``grpc.aio``
  channel with client interceptors.

The client libraries other than redis are optional (extras ``httpx``, ``aiohttp``,
``grpc``): import only the module of the client you use. This package imports none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from antifragile.errors import ConfigError
from antifragile.inprocess.breaker_outcomes import count_as_failure

if TYPE_CHECKING:
    from antifragile.inprocess.guard import Guard
    from antifragile.inprocess.runtime import Runtime


DEFAULT_FAILURE_STATUSES: frozenset[int] = frozenset(range(500, 600))
"""Statuses that count as failures of the dependency by default: every 5xx."""


def check_statuses(statuses: Iterable[int]) -> frozenset[int]:
    """``statuses`` as a frozenset, each checked to be an HTTP status.

    Raises:
        ConfigError: a status that is not an integer from 100 to 599 (names it).
    """
    checked = frozenset(statuses)
    for status in checked:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ConfigError(
                f"failure_statuses: must be HTTP statuses from 100 to 599 (got {status!r})"
            )
    return checked


class FailureStatus(Exception):
    """Raised inside the guard for a response with a failure status (never to the caller).

    Marked with ``count_as_failure``: the breaker counts it whatever its
    ``failure_exceptions``; the adapter catches it and returns the response.

    Args:
        response: The response with the failure status.
        status: Its status.
    """

    def __init__(self, response: Any, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.response = response
        count_as_failure(self)


class Answered:
    """What a guarded call returns when the dependency answered with an error.

    The breaker counts a call that returns as a success: an adapter wraps an error
    response that is not a failure of the dependency (an HTTP 404, a gRPC
    ``NOT_FOUND``) in this, and unwraps it outside the guard.

    Args:
        error: The exception to raise to the caller once out of the guard.
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def guard_of(runtime: Runtime, target: str) -> Guard:
    """``runtime.guard(target)``, refusing an empty target name.

    Created now, not on the first call, so the process guards ``target`` from the
    start (a chaos experiment's preflight sees it) and a guard configured earlier with
    ``runtime.guard(target, timeout_s=...)`` is the one used.

    Raises:
        ConfigError: ``target`` is not a non-empty string.
    """
    if not isinstance(target, str) or not target:
        raise ConfigError(f"target: must be a non-empty guard name (got {target!r})")
    return runtime.guard(target)


_DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def parse_host_key(key: str) -> tuple[str, int | None]:
    """A ``targets`` key as ``(host, port)``: port None matches any port of the host.

    Accepted: ``host``, ``host:port``, an IPv6 address bare (``::1``) or in brackets
    (``[::1]``, ``[::1]:8443``, the form URLs use). Hosts compare case-insensitively.

    Raises:
        ConfigError: a key that is not one of those (a URL, an empty host, a bad port).
    """
    bad = ConfigError(f"targets: keys must be host, host:port or [ipv6]:port (got {key!r})")
    if not isinstance(key, str):
        raise bad
    text = key.strip().lower()
    port: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise bad
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host = text  # a name, or a bare IPv6 address (no port: use brackets for one)
    if not host or any(c in host for c in "/@?#[] ") or host.count(":") == 1:
        raise bad
    if port is None:
        return host, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise bad
    return host, int(port)


class HostTargets:
    """The guard of an HTTP request: by host and port, by host, else the default target.

    Shared by the httpx transport and the aiohttp middleware, so both route alike.

    Args:
        runtime: The runtime that owns the guards.
        target: Guard of requests to hosts not in ``targets``; None: not guarded.
        targets: Host (see :func:`parse_host_key`) -> guard name.
        client: What is being guarded, for the error (``"guarded httpx client"``).

    Raises:
        ConfigError: neither ``target`` nor ``targets`` given, a bad key (see
            :func:`parse_host_key`) or an empty guard name.
    """

    __slots__ = ("_by_host", "_default")

    def __init__(
        self,
        runtime: Runtime,
        target: str | None,
        targets: Mapping[str, str] | None,
        client: str,
    ) -> None:
        if target is None and not targets:
            raise ConfigError(f"{client}: give a target, or targets by host")
        self._default: Guard | None = guard_of(runtime, target) if target is not None else None
        self._by_host: dict[tuple[str, int | None], Guard] = {
            parse_host_key(key): guard_of(runtime, name) for key, name in (targets or {}).items()
        }

    def get(self, scheme: str, host: str | None, port: int | None) -> Guard | None:
        """The guard of a request to ``host`` (IPv6 without brackets) on ``port``.

        ``port`` None is the scheme's default port (80 for http, 443 for https). A host
        not mapped gets the default target's guard (None: not guarded).
        """
        by_host = self._by_host
        if not by_host:
            return self._default
        name = (host or "").lower()
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        if port is None:
            port = _DEFAULT_PORTS.get(scheme.lower())
        return by_host.get((name, port)) or by_host.get((name, None)) or self._default
