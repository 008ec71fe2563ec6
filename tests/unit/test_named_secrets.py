"""Secrets stay in the worker: requests name probes and webhooks; URLs with credentials are refused.

Covers the request models (the API), the worker policy (``recovery.probes``,
``recovery.webhooks``, the old ``webhook_url``), the resolver
(``antifragile.recovery.named_targets``)
and the CLI's one-line refusal (exit 2).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError
from temporalio.testing import WorkflowEnvironment

from antifragile.errors import CREDENTIAL_ERROR, ConfigError, describe_validation_error
from antifragile.models.chaos_scenario import ChaosScenario
from antifragile.models.common import credential_in_url, redact_url
from antifragile.models.recovery import RecoveryRequest
from antifragile.policy import RecoveryPolicyConfig, WorkerPolicy
from antifragile.recovery.named_targets import (
    REDACTED,
    NamedTargetError,
    environment_problems,
    resolve_probe,
    resolve_webhook,
)
from antifragile.settings import Settings
from tests.helpers import run_cli_batch

SECRET = "hunter2-s3cr3t"

CREDENTIAL_PROBES = [
    f"redis://:{SECRET}@cache:6379/0",
    f"redis://default:{SECRET}@cache:6379/0",
    f"http://ops:{SECRET}@svc/health",
    f"https://{SECRET}@svc/health",
    f"tcp://u:{SECRET}@h:1",
    f"ftp://u:{SECRET}@h",  # a bad scheme too: the credential is reported first
    f"https://svc/health?token={SECRET}",
    f"https://svc/health?key={SECRET}",
    f"https://svc/health?password={SECRET}",
    f"https://svc/health?secret={SECRET}",
    f"https://svc/health?sig={SECRET}",
    f"https://svc/health?access_token={SECRET}",
    f"https://svc/health?x=1&API-Key={SECRET}",
    f"https://svc/health?X-Amz-Signature={SECRET}",
    f"redis://cache:6379/0?password={SECRET}",
    # found by the edge review: each of these went through before
    f"http://ops:{SECRET}@[::1/health",  # urlsplit refuses it: judged from the raw text
    f"http:///ops:{SECRET}@svc/health",
    f"https://svc/health#access_token={SECRET}",  # OAuth implicit flow: the fragment
    f"https://svc/health;jsessionid={SECRET}",
    f"https://svc/health?Authorization=Bearer%20{SECRET}",
    f"https://svc/health?passphrase={SECRET}",
    f"https://svc/health?X-Amz-Credential={SECRET}",
    f"https://svc/health?to%6Ben={SECRET}",
    f"https://svc/health?to\tken={SECRET}",
]


def request_error(**fields: object) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        RecoveryRequest.model_validate({"service": "svc", "probe": "tcp://h:1", **fields})
    return info.value


@pytest.mark.parametrize("url", CREDENTIAL_PROBES)
def test_a_probe_url_with_a_credential_is_refused_pointing_to_the_policy(url: str) -> None:
    error = request_error(probe=url)
    assert [e["type"] for e in error.errors()] == [CREDENTIAL_ERROR]
    line = describe_validation_error(error)
    assert SECRET not in line
    assert "\n" not in line
    assert "recovery.probes" in line and "probe:NAME" in line
    assert SECRET not in str(error)  # not even pydantic's own rendering shows it


@pytest.mark.parametrize(
    "action",
    [
        f"webhook:https://hooks.example/x?token={SECRET}",
        f"webhook:https://ops:{SECRET}@hooks.example/x",
    ],
)
def test_a_webhook_url_with_a_credential_is_refused(action: str) -> None:
    error = request_error(action=action)
    line = describe_validation_error(error)
    assert SECRET not in line and SECRET not in str(error)
    assert "recovery.webhooks" in line and "webhook:NAME" in line


def test_a_webhook_url_without_a_credential_is_refused_too() -> None:
    # Requests name webhooks: a requester never chooses where a worker POSTs.
    line = describe_validation_error(request_error(action="webhook:https://hooks.example/x"))
    assert "webhook:URL is refused" in line and "recovery.webhooks" in line


@pytest.mark.parametrize(
    "probe",
    ["probe:cache", "probe:redis.main_1", "tcp://h:1", "http://h/health?verbose=1", "redis://h/0"],
)
def test_names_and_credential_free_urls_are_accepted(probe: str) -> None:
    assert RecoveryRequest(service="svc", probe=probe).probe == probe


@pytest.mark.parametrize("action", ["none", "webhook", "webhook:ops-hook", "command:restart"])
def test_actions_name_what_the_policy_defines(action: str) -> None:
    assert RecoveryRequest(service="svc", probe="tcp://h:1", action=action).action == action


@pytest.mark.parametrize("probe", ["probe:", "probe:-x", "probe:a b", "probe:a/b"])
def test_a_bad_probe_name_is_refused(probe: str) -> None:
    assert "probe:NAME" in describe_validation_error(request_error(probe=probe))


def test_histories_written_before_the_rule_still_decode() -> None:
    # Temporal decodes payloads from JSON: a recovery started before the upgrade replays.
    old = {
        "service": "svc",
        "probe": f"redis://:{SECRET}@cache:6379/0",
        "action": "webhook:https://hooks.example/x",
    }
    request = RecoveryRequest.model_validate_json(json.dumps(old))
    # … with the credential redacted, so nothing the workflow shows or passes on repeats it
    assert request.probe == "redis://***@cache:6379/0"
    assert request.action == old["action"]


@pytest.mark.parametrize("url", CREDENTIAL_PROBES)
def test_a_credential_decoded_from_json_is_redacted_and_still_refused_by_the_worker(
    url: str,
) -> None:
    # A hand-written signal or start input (``temporal workflow signal --input …``) is
    # decoded from JSON like a history: let through, but never with the credential in it.
    if url.startswith("ftp://"):
        pytest.skip("a bad scheme is refused in JSON too")
    request = RecoveryRequest.model_validate_json(json.dumps({"service": "s", "probe": url}))
    assert SECRET not in request.probe and "***" in request.probe
    assert SECRET not in request.model_dump_json()
    with pytest.raises(NamedTargetError, match="refused: a credential"):
        resolve_probe(RecoveryPolicyConfig(), request.probe)


@pytest.mark.parametrize(
    "url", [f"https://hooks.example/x?token={SECRET}", f"https://u:{SECRET}@hooks.example/x"]
)
def test_a_webhook_url_decoded_from_json_is_redacted_and_refused(url: str) -> None:
    raw = {"service": "s", "probe": "tcp://h:1", "action": f"webhook:{url}"}
    request = RecoveryRequest.model_validate_json(json.dumps(raw))
    assert SECRET not in request.action and request.action.startswith("webhook:https://")
    with pytest.raises(NamedTargetError, match="refused: a credential"):
        resolve_webhook(RecoveryPolicyConfig(), request.action.removeprefix("webhook:"))


def test_chaos_steady_state_probes_follow_the_same_rule() -> None:
    base = {"name": "x", "chaos_type": "latency", "target": "db", "blast_radius": ["db"]}
    with pytest.raises(ValidationError) as info:
        ChaosScenario.model_validate({**base, "steady_state_probe": f"redis://:{SECRET}@h/0"})
    assert SECRET not in describe_validation_error(info.value)
    ok = ChaosScenario.model_validate({**base, "steady_state_probe": "probe:cache"})
    assert ok.steady_state_probe == "probe:cache"


def test_credential_detection_never_returns_the_value() -> None:
    assert credential_in_url(f"redis://:{SECRET}@h") == "user:password@"
    assert credential_in_url(f"http://h/?Token={SECRET}") == "query parameter 'Token'"
    assert credential_in_url("http://h/health?verbose=1&limit=2") is None
    assert credential_in_url("tcp://h:1") is None
    assert credential_in_url("http://h/users/@me?session=1#top") is None


def test_redacted_urls_keep_their_shape() -> None:
    assert redact_url(f"redis://default:{SECRET}@cache:6379/0") == "redis://***@cache:6379/0"
    assert (
        redact_url(f"https://h/x?a=1&token={SECRET}#access_token={SECRET}")
        == "https://h/x?a=1&token=***#access_token=***"
    )
    assert redact_url("https://h/health?verbose=1") == "https://h/health?verbose=1"


# --- the policy --------------------------------------------------------------------------


def load(tmp_path: Path, text: str) -> WorkerPolicy:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return WorkerPolicy.load(path)


def test_policy_names_webhooks_and_probes(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        "recovery:\n"
        "  webhooks:\n"
        "    pager:\n"
        "      url: https://hooks.example/${HOOK_PATH}\n"
        "      headers: {Authorization: 'Bearer ${HOOK_TOKEN}'}\n"
        "    plain: https://hooks.example/plain\n"
        "  probes:\n"
        "    cache: redis://:${REDIS_PASSWORD}@cache:6379/0\n",
    )
    hooks = policy.recovery.webhooks
    assert hooks["pager"].headers == {"Authorization": "Bearer ${HOOK_TOKEN}"}
    assert hooks["plain"].url == "https://hooks.example/plain"
    assert policy.recovery.probes == {"cache": "redis://:${REDIS_PASSWORD}@cache:6379/0"}


def test_an_old_policy_with_webhook_url_loads_as_the_default_webhook(tmp_path: Path) -> None:
    policy = load(tmp_path, "recovery:\n  webhook_url: https://hooks.example/old\n")
    assert policy.recovery.webhooks["default"].url == "https://hooks.example/old"
    assert resolve_webhook(policy.recovery, "", {}).url == "https://hooks.example/old"
    assert load(tmp_path, "recovery:\n  webhook_url: null\n").recovery.webhooks == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "recovery:\n  webhook_url: https://a/\n  webhooks: {default: https://b/}\n",
            "keep webhooks.default only",
        ),
        ("recovery:\n  webhooks: {x: ftp://a/}\n", "must start with http"),
        ("recovery:\n  webhooks: {x: {url: 'https://a/$HOME'}}\n", "${ENV_VAR}"),
        ("recovery:\n  webhooks: {x: {url: 'https://a/', nope: 1}}\n", "unknown field"),
        ("recovery:\n  webhooks: {'a b': https://a/}\n", "webhook name 'a b'"),
        ("recovery:\n  probes: {x: 'ftp://h'}\n", "must be a tcp://"),
        ("recovery:\n  probes: {x: 'redis://:${BAD-NAME}@h/0'}\n", "${ENV_VAR}"),
        ("recovery:\n  probes: {'-x': 'tcp://h:1'}\n", "probe name '-x'"),
    ],
)
def test_bad_named_targets_in_a_policy_name_the_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert expected in str(info.value)


# --- the resolver (inside the activity) ----------------------------------------------------


def recovery_policy() -> RecoveryPolicyConfig:
    return RecoveryPolicyConfig.model_validate(
        {
            "webhooks": {
                "pager": {
                    "url": "https://hooks.example/v1?sig=${HOOK_SIG}",
                    "headers": {"Authorization": "Bearer ${HOOK_TOKEN}", "X-Team": "sre"},
                }
            },
            "probes": {"cache": "redis://:${REDIS_PASSWORD}@127.0.0.1:6379/0"},
        }
    )


def test_a_named_probe_is_resolved_from_the_environment() -> None:
    target = resolve_probe(recovery_policy(), "probe:cache", {"REDIS_PASSWORD": SECRET})
    assert target.url == f"redis://:{SECRET}@127.0.0.1:6379/0"
    assert target.label == "probe:cache"
    assert target.redact(f"PING failed: {SECRET} rejected") == f"PING failed: {REDACTED} rejected"


def test_a_plain_url_passes_through_unchanged() -> None:
    target = resolve_probe(recovery_policy(), "tcp://h:1", {})
    assert (target.url, target.secrets) == ("tcp://h:1", ())


def test_a_plain_url_with_a_credential_is_refused_in_the_worker_too() -> None:
    # A request that bypassed the models (raw JSON from the Temporal CLI, an old history).
    with pytest.raises(NamedTargetError) as info:
        resolve_probe(recovery_policy(), f"redis://:{SECRET}@h/0", {})
    assert SECRET not in str(info.value) and "recovery.probes" in str(info.value)


def test_a_missing_variable_names_it_and_never_a_value() -> None:
    with pytest.raises(NamedTargetError) as info:
        resolve_probe(recovery_policy(), "probe:cache", {"OTHER": SECRET})
    assert str(info.value) == (
        "probe 'cache' needs ${REDIS_PASSWORD}, which is not set in the worker's environment"
    )


def test_an_unknown_name_lists_the_defined_ones() -> None:
    with pytest.raises(NamedTargetError, match=r"'nope' is not defined .*: cache\)"):
        resolve_probe(recovery_policy(), "probe:nope", {})
    with pytest.raises(NamedTargetError, match=r"'nope' is not defined .*: pager\)"):
        resolve_webhook(recovery_policy(), "nope", {})


def test_a_named_webhook_carries_its_headers_and_redacts_them() -> None:
    env = {"HOOK_TOKEN": SECRET, "HOOK_SIG": "sig-0123456789"}
    hook = resolve_webhook(recovery_policy(), "pager", env)
    assert hook.url == "https://hooks.example/v1?sig=sig-0123456789"
    assert hook.headers == {"Authorization": f"Bearer {SECRET}", "X-Team": "sre"}
    assert hook.label == "webhook:pager"
    leaked = f"webhook failed: {SECRET} / Bearer {SECRET} / sig-0123456789"
    assert SECRET not in hook.redact(leaked) and "sig-0123456789" not in hook.redact(leaked)


def test_a_webhook_url_from_an_old_history_is_refused_by_the_worker() -> None:
    with pytest.raises(NamedTargetError, match="webhook:URL is refused"):
        resolve_webhook(recovery_policy(), "https://anywhere.example/", {})


# --- the CLI ---------------------------------------------------------------------------------


async def test_the_cli_refuses_credentials_with_one_line_and_exit_2() -> None:
    commands = [
        ["recovery", "start", "svc", "--probe", f"redis://:{SECRET}@cache:6379/0"],
        ["recovery", "start", "svc", "--probe", f"https://svc/health?token={SECRET}"],
        [
            "recovery",
            "start",
            "svc",
            "--probe",
            "tcp://h:1",
            "--action",
            f"webhook:https://h/?key={SECRET}",
        ],
        ["recovery", "start", "svc", "--probe", "tcp://h:1", "--action", "webhook:https://h/x"],
        # found by the edge review: mistyped URLs escaped the credential check and were
        # quoted whole in the error
        ["recovery", "start", "svc", "--probe", f"redis//:{SECRET}@cache:6379/0"],
        ["recovery", "start", "svc", "--probe", f"\x01http://u:{SECRET}@h/"],
        ["recovery", "start", "svc", "--probe", f"htps//h/health?token={SECRET}"],
        ["recovery", "start", "svc", "--probe", "tcp://h:1", "--action", f"webhook//{SECRET}@h"],
    ]
    env = {"PATH": "/usr/bin:/bin", "ANTIFRAGILE_TEMPORAL_ADDRESS": "127.0.0.1:1"}
    for result in await run_cli_batch(env, commands):
        assert result.code == 2, result
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert SECRET not in result.stderr
        assert "worker policy" in lines[0]
    # A mistyped value without a credential is still quoted, to help find the typo.
    (typo,) = await run_cli_batch(env, [["recovery", "start", "svc", "--probe", "htp://h:1"]])
    assert "(got 'htp://h:1')" in typo.stderr, typo


# --- malformed resolved URLs never quote themselves -------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"tcp://127.0.0.1:{SECRET}",
        f"http://127.0.0.1:{SECRET}/health",
        f"redis://127.0.0.1:{SECRET}/0",
    ],
)
async def test_a_malformed_probe_url_is_reported_without_quoting_it(url: str) -> None:
    from antifragile.recovery.probes import probe

    outcome = await probe(url, 1.0)
    assert not outcome.healthy
    assert SECRET not in outcome.detail, outcome.detail


@pytest.mark.parametrize(
    "url", [f"nope://{SECRET}/x", f"http://127.0.0.1:{SECRET}/x", f"http://[{SECRET}/x"]
)
def test_a_malformed_webhook_url_is_reported_without_quoting_it(url: str) -> None:
    from antifragile.recovery.probes import post_webhook

    error = post_webhook(url, {}, 1.0)
    assert error is not None and SECRET not in error, error


@pytest.mark.parametrize(
    "text",
    [
        f"recovery:\n  probes: {{x: 'ftp://:{SECRET}@h'}}\n",
        f"recovery:\n  probes: {{'-x': 'redis://:{SECRET}@h/0'}}\n",
        f"recovery:\n  webhooks: {{x: {{url: 'https://a/', headers: {{A: 'B ${SECRET}'}}}}}}\n",
        f"recovery:\n  webhooks: {{x: {{url: 'https://a/?t={SECRET}', nope: 1}}}}\n",
        f"recovery:\n  webhooks: {{x: {{headers: {{Authorization: '{SECRET}'}}}}}}\n",
        # found by the edge review: a key pasted where its variable's name belongs
        f"recovery:\n  approvers: {{alice: {{key_env: 'sk-{SECRET}'}}}}\n",
        f"recovery:\n  approvers: {{alice: {{key: '{SECRET}'}}}}\n",
        f"recovery:\n  commands: {{hook: [curl, -H, 'Authorization: {SECRET}', 1]}}\n",
        f"recovery:\n  commands: {{hook: 'curl -H {SECRET}'}}\n",
    ],
)
def test_a_bad_policy_entry_never_shows_its_value(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert SECRET not in str(info.value)
    assert "recovery." in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        # a tab where YAML wants spaces, on the line after a literal password
        f"recovery:\n  probes:\n    cache: redis://:{SECRET}@h:6379/0\n\tbad: x\n",
        # an unclosed flow mapping that holds a token
        f'recovery:\n  webhooks:\n    pager: {{url: "https://h/x?token={SECRET}", '
        f"headers: {{Authorization: Bearer {SECRET}}}\n",
        # a bad indentation inside a webhook's headers
        f"recovery:\n  webhooks:\n    pager:\n      url: https://h/x\n      headers:\n"
        f"        Authorization: Bearer {SECRET}\n       X: y\n",
    ],
)
def test_a_yaml_error_is_one_line_with_its_place_and_never_quotes_the_file(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        WorkerPolicy.load(path)
    message = str(info.value)
    assert SECRET not in message and SECRET[:7] not in message
    assert "\n" not in message
    assert "not valid YAML (line " in message and ", column " in message


# --- the worker's own Redis URL ----------------------------------------------------------------


async def test_the_cli_never_prints_the_password_of_its_redis_url() -> None:
    # A dead Redis with a password, and a mistyped one: `health` printed the URL whole (and
    # `--json` put it in its document); a bad setting echoed it twice.
    base = {"PATH": "/usr/bin:/bin", "ANTIFRAGILE_TEMPORAL_ADDRESS": "127.0.0.1:1"}
    cases = [
        ({"ANTIFRAGILE_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:1/0"}, ["health"]),
        ({"ANTIFRAGILE_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:1/0"}, ["health", "--json"]),
        ({"ANTIFRAGILE_REDIS_URL": f"redis//:{SECRET}@h:6379"}, ["recovery", "status", "x"]),
    ]
    for extra, command in cases:
        (result,) = await run_cli_batch({**base, **extra}, [command])
        assert result.code != 0, result
        assert SECRET not in result.stdout + result.stderr, (command, result)
        assert "\n" not in result.stderr.strip(), result.stderr


def test_a_value_read_from_a_file_loses_its_line_break() -> None:
    policy = RecoveryPolicyConfig.model_validate(
        {
            "webhooks": {
                "pager": {"url": "https://h/x", "headers": {"Authorization": "Bearer ${T}"}}
            },
            "probes": {"cache": "redis://:${P}@cache:6379/0"},
        }
    )
    hook = resolve_webhook(policy, "pager", {"T": SECRET + "\n"})
    # A header with a line break made every call fail with a bare "ValueError".
    assert hook.headers == {"Authorization": f"Bearer {SECRET}"}
    assert resolve_probe(policy, "probe:cache", {"P": SECRET + "\r\n"}).url == (
        f"redis://:{SECRET}@cache:6379/0"
    )
    with pytest.raises(NamedTargetError, match=r"\$\{T\} holds a line break") as info:
        resolve_webhook(policy, "pager", {"T": f"{SECRET}\nX-Injected: 1"})
    assert SECRET not in str(info.value)


# --- the worker's environment, checked at start ------------------------------------------------


def test_what_the_environment_lacks_is_named_without_values() -> None:
    policy = RecoveryPolicyConfig.model_validate(
        {
            "probes": {"cache": "redis://:${CACHE_PW}@h/0", "db": "tcp://h:5432"},
            "webhooks": {
                "pager": {"url": "https://h/${PATH_TOKEN}", "headers": {"A": "B ${CACHE_PW}"}}
            },
            "approvers": {"alice": {"key_env": "ALICE_KEY"}, "bob": {"key_env": "BOB_KEY"}},
        }
    )
    env = {"PATH_TOKEN": SECRET, "BOB_KEY": "short\n"}
    assert environment_problems(policy, env) == [
        "${CACHE_PW} is not set: probe 'cache', webhook 'pager' will fail",
        "$ALICE_KEY is not set: approver 'alice' cannot approve anything",
        "$BOB_KEY is shorter than 16 bytes: approver 'bob' cannot approve anything",
    ]
    full = {**env, "CACHE_PW": SECRET, "ALICE_KEY": "k" * 16, "BOB_KEY": "k" * 32 + "\n"}
    assert environment_problems(policy, full) == []


async def test_the_worker_says_at_start_what_its_environment_lacks(
    time_skipping_env: WorkflowEnvironment,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers.main import run_worker

    monkeypatch.delenv("AF_TEST_UNSET_PW", raising=False)
    policy = WorkerPolicy(
        recovery=RecoveryPolicyConfig.model_validate(
            {"probes": {"cache": "redis://:${AF_TEST_UNSET_PW}@h/0"}}
        )
    )
    settings = Settings(
        temporal_address=time_skipping_env.client.service_client.config.target_host,
        task_queue="tq-env-check",
    )
    stop = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="antifragile.worker")
    await run_worker(settings, policy, stop=stop, install_signal_handlers=False, on_ready=stop.set)
    assert "worker policy: ${AF_TEST_UNSET_PW} is not set: probe 'cache' will fail" in caplog.text


@pytest.mark.parametrize("value", ["file:///etc/passwd", "ftp://h/x", f"{SECRET}"])
def test_a_webhook_url_given_whole_as_a_variable_must_resolve_to_http(value: str) -> None:
    # urllib would "POST" to file:// or ftp:// (a file read, a crash on its status).
    policy = RecoveryPolicyConfig.model_validate({"webhooks": {"pager": "${HOOK_URL}"}})
    with pytest.raises(NamedTargetError, match="must be http:// or https://") as info:
        resolve_webhook(policy, "pager", {"HOOK_URL": value})
    assert SECRET not in str(info.value)
    ok = resolve_webhook(policy, "pager", {"HOOK_URL": f"https://h/x?token={SECRET}"})
    assert ok.url == f"https://h/x?token={SECRET}" and SECRET in ok.secrets
