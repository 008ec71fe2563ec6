"""One way to connect to Temporal, used by the CLI, workers, the runtime bridge and tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from antifragile.errors import AntifragileError, ConfigError
from antifragile.settings import Settings


class TemporalUnavailableError(AntifragileError):
    """Temporal could not be reached; the message names the address tried."""


def tls_config(settings: Settings) -> TLSConfig | bool:
    """The ``tls`` argument of ``Client.connect`` for ``settings``.

    A :class:`TLSConfig` when a CA or a client certificate is configured (files read
    now); ``True`` for TLS with the system roots (``temporal_tls`` or an API key);
    ``False`` for plain text.
    """
    if settings.temporal_tls_cert or settings.temporal_tls_ca:
        return TLSConfig(
            server_root_ca_cert=_read_tls_file("temporal_tls_ca", settings.temporal_tls_ca),
            client_cert=_read_tls_file("temporal_tls_cert", settings.temporal_tls_cert),
            client_private_key=_read_tls_file("temporal_tls_key", settings.temporal_tls_key),
        )
    return settings.uses_tls


def _read_tls_file(field: str, path: Path | None) -> bytes | None:
    """The bytes of a configured TLS file; one that cannot be read is a :class:`ConfigError`."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{field} {path}: {exc.strerror or exc}") from None


async def connect(
    settings: Settings | None = None,
    *,
    runtime: Runtime | None = None,
    interceptors: Sequence[Interceptor] | None = None,
) -> Client:
    """Connect to Temporal with the pydantic data converter and the configured TLS/API key.

    Args:
        settings: Address, namespace, TLS files, API key; default from ``ANTIFRAGILE_*``.
        runtime: A Temporal core runtime (e.g. one exporting SDK metrics).
        interceptors: Client interceptors (workers built from the client inherit them).
            Default: the tracing interceptor when ``settings.otel_endpoint`` is set, else
            none.

    Raises:
        TemporalUnavailableError: nothing answered at ``settings.temporal_address``.
        ConfigError: tracing is configured but its packages are not installed.
        ConfigError: a configured TLS file cannot be read (the message names it).
    """
    settings = settings or Settings()
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    if interceptors is None:
        from antifragile.telemetry import interceptors_from_settings

        interceptors = interceptors_from_settings(settings)
    tls = tls_config(settings)
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=pydantic_data_converter,
            tls=tls,
            api_key=api_key,
            runtime=runtime,
            interceptors=interceptors,
        )
    except RuntimeError as exc:
        text = str(exc)
        why = (
            "connection refused"
            if "onnection refused" in text or "ConnectionRefused" in text
            else text.splitlines()[0][:160]
        )
        raise TemporalUnavailableError(
            f"cannot reach Temporal at {settings.temporal_address} "
            f"(namespace {settings.temporal_namespace}): {why}"
        ) from None


async def ensure_search_attributes(client: Client) -> list[str]:
    """Register any of our custom search attributes the namespace lacks; return those added.

    Idempotent: safe to run at every start (compose init service, ``antifragile setup``).
    """
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import (
        AddSearchAttributesRequest,
        ListSearchAttributesRequest,
    )
    from temporalio.service import RPCError, RPCStatusCode

    from antifragile.constants import SEARCH_ATTRIBUTES

    try:
        existing = set(
            (
                await client.operator_service.list_search_attributes(
                    ListSearchAttributesRequest(namespace=client.namespace)
                )
            ).custom_attributes
        )
    except RPCError as exc:
        # The time-skipping test server cannot list them; it accepts adding them.
        if exc.status != RPCStatusCode.UNIMPLEMENTED:
            raise
        existing = set()
    missing = {
        name: IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{kind.upper()}")
        for name, kind in SEARCH_ATTRIBUTES.items()
        if name not in existing
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=client.namespace, search_attributes=missing)
        )
    return sorted(missing)
