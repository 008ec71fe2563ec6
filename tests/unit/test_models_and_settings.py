"""Validation of requests, policy files and settings: errors name the field and the value."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from antifragile.errors import ConfigError, describe_validation_error
from antifragile.hashing import hash_matches, redact_hash
from antifragile.models.recovery import RecoveryPolicy, RecoveryRequest, RecoveryStrategy
from antifragile.policy import WorkerPolicy
from antifragile.settings import Settings


def error_of(**fields: object) -> str:
    with pytest.raises(ValidationError) as info:
        RecoveryRequest.model_validate(fields)
    return describe_validation_error(info.value)


def test_request_defaults_match_the_documented_policy() -> None:
    request = RecoveryRequest(service="redis", probe="redis://127.0.0.1:6379/0")
    assert request.strategy is RecoveryStrategy.EXPONENTIAL_BACKOFF
    assert request.priority == 1
    assert request.policy == RecoveryPolicy(
        max_retry_attempts=5, backoff_multiplier=2.0, initial_delay_ms=1000, max_delay_ms=60000
    )
    assert request.policy.jitter is False


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"service": "a b", "probe": "tcp://h:1"}, "service"),
        ({"service": "a", "probe": "ftp://h"}, "probe"),
        ({"service": "a", "probe": "tcp://h"}, "tcp://host:port"),
        ({"service": "a", "probe": "tcp://h:1", "action": "rm -rf /"}, "action"),
        ({"service": "a", "probe": "tcp://h:1", "strategy": "yolo"}, "strategy"),
        ({"service": "a", "probe": "tcp://h:1", "priority": -1}, "priority"),
        ({"service": "a", "probe": "tcp://h:1", "surprise": 1}, "unknown field 'surprise'"),
        (
            {
                "service": "a",
                "probe": "tcp://h:1",
                "policy": {"initial_delay_ms": 5000, "max_delay_ms": 10},
            },
            "max_delay_ms",
        ),
    ],
)
def test_invalid_requests_are_described_by_field_and_value(
    fields: dict[str, object], expected: str
) -> None:
    assert expected in error_of(**fields)


def test_error_message_shows_the_bad_value() -> None:
    assert "'ftp://h'" in error_of(service="a", probe="ftp://h")


@pytest.mark.parametrize("action", ["none", "webhook", "webhook:ops-hook", "command:restart"])
def test_accepted_actions(action: str) -> None:
    assert RecoveryRequest(service="a", probe="tcp://h:1", action=action).action == action


def test_policy_file_defaults_apply_without_a_file() -> None:
    policy = WorkerPolicy.load(None)
    assert policy.recovery.max_concurrent == 5
    assert policy.recovery.max_admissions_per_minute == 60
    assert policy.recovery.retry_budget == 0.1
    assert policy.chaos.max_duration_s == 300
    assert policy.chaos.lease_ttl_s == 15


def test_policy_file_is_loaded_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "recovery:\n  approvers: [alice]\n  commands:\n    restart: [systemctl, restart, x]\n"
        "chaos:\n  allowed_targets: [redis]\n  lease_ttl_s: 5\n"
    )
    policy = WorkerPolicy.load(path)
    assert list(policy.recovery.approvers) == ["alice"]
    assert policy.recovery.commands["restart"] == ["systemctl", "restart", "x"]
    assert policy.chaos.allowed_targets == ["redis"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("recovery:\n  max_concurrent: 0\n", "recovery.max_concurrent"),
        ("chaos:\n  max_duration_s: 900\n", "chaos.max_duration_s"),
        ("recovery:\n  typo: 1\n", "unknown field 'recovery.typo'"),
        ("[1, 2]\n", "mapping"),
        ("recovery: [\n", "not valid YAML"),
    ],
)
def test_bad_policy_files_name_the_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        WorkerPolicy.load(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_policy_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        WorkerPolicy.load(tmp_path / "absent.yaml")


def test_settings_read_antifragile_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTIFRAGILE_TEMPORAL_ADDRESS", "temporal:7233")
    monkeypatch.setenv("ANTIFRAGILE_REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("ANTIFRAGILE_TASK_QUEUE", "q")
    settings = Settings()
    assert (settings.temporal_address, settings.redis_url, settings.task_queue) == (
        "temporal:7233",
        "redis://cache:6379/2",
        "q",
    )
    assert settings.constitutional_hash == "cdd01ef066bc6cf2"


def test_settings_reject_an_address_without_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTIFRAGILE_TEMPORAL_ADDRESS", "temporal")
    with pytest.raises(ValidationError, match="host:port"):
        Settings()


def test_hash_comparison_is_case_insensitive_and_redaction_shows_eight_digits() -> None:
    assert hash_matches("CDD01EF066BC6CF2", "cdd01ef066bc6cf2")
    assert not hash_matches("cdd01ef066bc6cf3", "cdd01ef066bc6cf2")
    assert redact_hash("cdd01ef066bc6cf2") == "cdd01ef0…"
    assert redact_hash("abc") == "abc"


def test_workflow_url_points_at_the_ui() -> None:
    settings = Settings(ui_url="http://ui:8080/")
    assert settings.workflow_url("recovery-x", "r1") == (
        "http://ui:8080/namespaces/default/workflows/recovery-x/r1/history"
    )
