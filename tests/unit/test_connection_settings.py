"""Connection, logging and tracing settings: TLS / API key to an existing cluster, JSON logs,
the optional OpenTelemetry tracing, and errors that name the field and the value."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.service import TLSConfig

from antifragile import telemetry as tracing
from antifragile.errors import ConfigError, describe_validation_error
from antifragile.settings import Settings
from antifragile.telemetry import JsonFormatter, configure_logging
from antifragile.temporal_client import tls_config


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for name in ("ca", "cert", "key"):
        path = tmp_path / f"{name}.pem"
        path.write_bytes(f"-----{name}-----".encode())
        files[name] = path
    return files


def test_plain_text_by_default_and_tls_with_system_roots_for_an_api_key() -> None:
    assert tls_config(Settings()) is False
    assert tls_config(Settings(temporal_tls=True)) is True
    assert tls_config(Settings(temporal_api_key="secret")) is True  # type: ignore[arg-type]


def test_mtls_reads_the_ca_certificate_and_key_files(pem_files: dict[str, Path]) -> None:
    config = tls_config(
        Settings(
            temporal_tls_ca=pem_files["ca"],
            temporal_tls_cert=pem_files["cert"],
            temporal_tls_key=pem_files["key"],
        )
    )
    assert isinstance(config, TLSConfig)
    assert config.server_root_ca_cert == b"-----ca-----"
    assert config.client_cert == b"-----cert-----"
    assert config.client_private_key == b"-----key-----"


def test_a_private_ca_alone_is_server_tls_without_a_client_certificate(
    pem_files: dict[str, Path],
) -> None:
    config = tls_config(Settings(temporal_tls_ca=pem_files["ca"]))
    assert isinstance(config, TLSConfig)
    assert config.client_cert is None and config.client_private_key is None


@pytest.mark.parametrize(("given", "missing"), [("cert", "key"), ("key", "cert")])
def test_a_client_certificate_without_its_key_is_refused_naming_both_but_no_secret(
    monkeypatch: pytest.MonkeyPatch, pem_files: dict[str, Path], given: str, missing: str
) -> None:
    monkeypatch.setenv("ANTIFRAGILE_TEMPORAL_API_KEY", "do-not-print-me")
    monkeypatch.setenv(f"ANTIFRAGILE_TEMPORAL_TLS_{given.upper()}", str(pem_files[given]))
    with pytest.raises(ValidationError) as info:
        Settings()
    message = describe_validation_error(info.value)
    assert f"temporal_tls_{given}" in message and f"temporal_tls_{missing}" in message
    assert str(pem_files[given]) in message
    assert "do-not-print-me" not in message


def test_tls_and_api_key_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, pem_files: dict[str, Path]
) -> None:
    monkeypatch.setenv("ANTIFRAGILE_TEMPORAL_API_KEY", "k-123")
    monkeypatch.setenv("ANTIFRAGILE_TEMPORAL_TLS_CERT", str(pem_files["cert"]))
    monkeypatch.setenv("ANTIFRAGILE_TEMPORAL_TLS_KEY", str(pem_files["key"]))
    settings = Settings()
    assert settings.temporal_api_key is not None
    assert settings.temporal_api_key.get_secret_value() == "k-123"
    assert "k-123" not in repr(settings)  # secrets never print
    assert settings.uses_tls


@pytest.mark.parametrize(
    ("field", "value"),
    [("log_level", "LOUD"), ("log_format", "xml"), ("otel_endpoint", "collector:4318")],
)
def test_bad_logging_and_tracing_settings_name_the_field_and_value(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    monkeypatch.setenv(f"ANTIFRAGILE_{field.upper()}", value)
    with pytest.raises(ValidationError) as info:
        Settings()
    message = describe_validation_error(info.value)
    assert field in message and value in message


def test_log_settings_are_case_insensitive_and_json_logs_are_configured_from_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTIFRAGILE_LOG_LEVEL", "warning")
    monkeypatch.setenv("ANTIFRAGILE_LOG_FORMAT", "JSON")
    settings = Settings()
    assert (settings.log_level, settings.log_format) == ("WARNING", "json")
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging(settings=settings)
        assert root.level == logging.WARNING
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]


def test_tracing_is_off_without_an_endpoint_and_an_empty_endpoint_means_off() -> None:
    assert tracing.interceptors_from_settings(Settings()) == []
    assert Settings(otel_endpoint="").otel_endpoint is None


def test_an_endpoint_adds_the_sdk_tracing_interceptor_once_per_process() -> None:
    settings = Settings(otel_endpoint="http://127.0.0.1:9/v1/traces", otel_service_name="svc")
    try:
        (first,) = tracing.interceptors_from_settings(settings)
        (second,) = tracing.interceptors_from_settings(settings)
        assert isinstance(first, TracingInterceptor)
        assert len(tracing._providers) == 1  # one exporter thread, however many clients
    finally:
        tracing._providers.clear()  # nothing was exported: no shutdown/flush to a dead port
    assert isinstance(second, TracingInterceptor)


def test_an_endpoint_without_the_otel_extra_is_a_config_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(ConfigError, match=r"antifragile\[otel\]"):
        tracing.interceptors_from_settings(Settings(otel_endpoint="http://127.0.0.1:9/v1/traces"))


@pytest.mark.parametrize(("given", "level"), [("warn", "WARNING"), ("FATAL", "CRITICAL")])
def test_the_aliases_the_logging_module_accepts_are_accepted(given: str, level: str) -> None:
    assert Settings(log_level=given).log_level == level  # type: ignore[arg-type]
