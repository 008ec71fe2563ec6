"""Signed approvals: the HMAC format, the time window, usable-once, and the policy's keys."""

from __future__ import annotations

import hmac
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.common import CommonActivities
from antifragile.hashing import (
    MIN_KEY_BYTES,
    sign_decision,
    signature_digest,
    signing_message,
    verify_decision,
)
from antifragile.models.recovery import AuthorizeApproverInput
from antifragile.policy import ApproverConfig, RecoveryPolicyConfig, WorkerPolicy
from antifragile.settings import Settings

KEY = b"k" * 32
AT = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
FIELDS = dict(workflow_id="recovery-db", first_run_id="run-1", decision="approved", approver="al")


def test_message_binds_every_field_and_truncates_to_seconds() -> None:
    msg = signing_message(**FIELDS, signed_at=AT.replace(microsecond=999))
    assert msg == (
        b"antifragile-approval-v1\nrecovery-db\nrun-1\napproved\nal\n2026-11-30T12:00:00+00:00"
    )


def test_valid_signature_passes_and_exact_window_edge_is_inside() -> None:
    sig = sign_decision(KEY, **FIELDS, signed_at=AT)
    assert len(sig) == 64
    assert verify_decision(KEY, sig, **FIELDS, signed_at=AT, now=AT) is None
    edge = AT + timedelta(seconds=300)
    assert verify_decision(KEY, sig, **FIELDS, signed_at=AT, now=edge, window_s=300) is None
    late = edge + timedelta(microseconds=1)
    assert "window" in (verify_decision(KEY, sig, **FIELDS, signed_at=AT, now=late) or "")


@pytest.mark.parametrize(
    "change",
    [
        {"workflow_id": "recovery-other"},
        {"first_run_id": "run-2"},
        {"decision": "rejected"},
        {"approver": "mallory"},
    ],
)
def test_signature_for_another_decision_is_refused(change: dict[str, str]) -> None:
    sig = sign_decision(KEY, **FIELDS, signed_at=AT)
    fields = {**FIELDS, **change}
    assert verify_decision(KEY, sig, **fields, signed_at=AT, now=AT) is not None


def test_wrong_key_unsigned_naive_and_short_key_are_refused() -> None:
    sig = sign_decision(KEY, **FIELDS, signed_at=AT)
    assert verify_decision(b"x" * 32, sig, **FIELDS, signed_at=AT, now=AT) is not None
    assert verify_decision(KEY, "", **FIELDS, signed_at=AT, now=AT) is not None
    assert verify_decision(KEY, sig, **FIELDS, signed_at=None, now=AT) is not None
    naive = AT.replace(tzinfo=None)
    assert verify_decision(KEY, sig, **FIELDS, signed_at=naive, now=AT) is not None
    with pytest.raises(ValueError):
        sign_decision(b"k" * (MIN_KEY_BYTES - 1), **FIELDS, signed_at=AT)


def test_refusal_never_shows_the_expected_signature() -> None:
    expected = sign_decision(KEY, **FIELDS, signed_at=AT)
    reason = verify_decision(KEY, "0" * 64, **FIELDS, signed_at=AT, now=AT) or ""
    assert expected not in reason and expected[:8] not in reason


def test_policy_accepts_a_list_or_a_mapping_of_approvers() -> None:
    assert list(RecoveryPolicyConfig(approvers=["a", "b"]).approvers) == ["a", "b"]
    cfg = RecoveryPolicyConfig.model_validate({"approvers": {"a": {"key_env": "A_KEY"}, "b": None}})
    assert cfg.approvers == {"a": ApproverConfig(key_env="A_KEY"), "b": ApproverConfig()}
    assert cfg.approver_key_env("a") == "A_KEY" and cfg.approver_key_env("b") is None


async def test_activity_checks_signature_window_and_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AL_KEY", KEY.decode())
    policy = WorkerPolicy(
        recovery=RecoveryPolicyConfig.model_validate({"approvers": {"al": {"key_env": "AL_KEY"}}})
    )
    acts = CommonActivities(Settings(), policy)
    now = datetime.now(UTC)
    sig = sign_decision(KEY, **FIELDS, signed_at=now)
    data = AuthorizeApproverInput(**FIELDS, signature=sig, signed_at=now)
    ok = await acts.authorize_approver(data)
    assert ok.allowed and ok.signature_digest == signature_digest(sig)
    again = data.model_copy(update={"used_signatures": [ok.signature_digest]})
    assert (await acts.authorize_approver(again)).reason == "signature already used"
    unsigned = AuthorizeApproverInput(**FIELDS)
    refused = await acts.authorize_approver(unsigned)
    assert not refused.allowed and "must sign" in refused.reason
    forged = data.model_copy(update={"approver": "al", "decision": "rejected"})
    assert not (await acts.authorize_approver(forged)).allowed
    monkeypatch.delenv("AL_KEY")
    assert "no key" in (await acts.authorize_approver(data)).reason


# --- found by the edge review ------------------------------------------------------------------


def acts_with_key(monkeypatch: pytest.MonkeyPatch, worker_key: str) -> CommonActivities:
    monkeypatch.setenv("AL_KEY", worker_key)
    policy = WorkerPolicy(
        recovery=RecoveryPolicyConfig.model_validate({"approvers": {"al": {"key_env": "AL_KEY"}}})
    )
    return CommonActivities(Settings(), policy)


@pytest.mark.parametrize(
    ("cli_key", "worker_key"),
    [
        (KEY.decode() + "\n", KEY.decode()),  # the CLI's key read from a file, newline kept
        (KEY.decode(), KEY.decode() + "\n"),  # the worker's key from a mounted secret file
        (" " + KEY.decode() + "\r\n", KEY.decode()),
    ],
)
async def test_a_key_read_with_a_trailing_newline_signs_and_verifies_alike(
    time_skipping_env: WorkflowEnvironment,
    monkeypatch: pytest.MonkeyPatch,
    cli_key: str,
    worker_key: str,
) -> None:
    from antifragile.cli._common import approval_signal

    # A real workflow for the CLI to read the first run id from (no worker runs it).
    handle = await time_skipping_env.client.start_workflow(
        "NobodyRunsThis", id=f"recovery-keys-{uuid.uuid4().hex[:8]}", task_queue="no-worker"
    )
    try:
        signal = await approval_signal(
            handle, approver="al", note="", decision="approved", key=cli_key
        )
        desc = await handle.describe()
        data = AuthorizeApproverInput(
            workflow_id=handle.id,
            first_run_id=desc.raw_description.workflow_execution_info.first_run_id,
            decision="approved",
            approver=signal.approver,
            signature=signal.signature,
            signed_at=signal.signed_at,
        )
        verdict = await acts_with_key(monkeypatch, worker_key).authorize_approver(data)
        assert verdict.allowed, verdict.reason
    finally:
        await handle.terminate("test over")


async def test_a_short_key_in_the_workers_environment_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    short = "k" * (MIN_KEY_BYTES - 1)
    now = datetime.now(UTC)
    # Even a decision signed with that same short key: the worker never accepts a weak key.
    sig = hmac.new(short.encode(), signing_message(**FIELDS, signed_at=now), "sha256").hexdigest()
    data = AuthorizeApproverInput(**FIELDS, signature=sig, signed_at=now)
    verdict = await acts_with_key(monkeypatch, short + "\n").authorize_approver(data)
    assert not verdict.allowed
    assert "$AL_KEY" in verdict.reason and f"shorter than {MIN_KEY_BYTES} bytes" in verdict.reason
    assert short not in verdict.reason


async def test_a_name_the_cli_cannot_sign_is_one_line_not_a_traceback() -> None:
    from antifragile.cli._common import approval_signal
    from antifragile.errors import ConfigError

    with pytest.raises(ConfigError, match="--by"):
        await approval_signal(
            None, approver="al\nice", note="", decision="approved", key=KEY.decode()
        )


async def test_a_hand_written_signal_cannot_dodge_usable_once_or_the_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `temporal workflow signal --input '{...}'`: the same signature in upper case, with
    # spaces around it, or with a naive or far-future time.
    from antifragile.models.common import ApprovalSignal

    acts = acts_with_key(monkeypatch, KEY.decode())
    now = datetime.now(UTC).replace(microsecond=0)
    sig = sign_decision(KEY, **FIELDS, signed_at=now)
    first = await acts.authorize_approver(
        AuthorizeApproverInput(**FIELDS, signature=sig, signed_at=now)
    )
    assert first.allowed
    for variant in (sig.upper(), f"  {sig} ", sig.upper().center(70)):
        again = AuthorizeApproverInput(
            **FIELDS, signature=variant, signed_at=now, used_signatures=[first.signature_digest]
        )
        assert (await acts.authorize_approver(again)).reason == "signature already used"
    spaced = AuthorizeApproverInput(**FIELDS, signature=sig[:32] + " " + sig[32:], signed_at=now)
    assert not (await acts.authorize_approver(spaced)).allowed
    naive = ApprovalSignal.model_validate_json(
        f'{{"approver": "al", "signature": "{sig}", "signed_at": "{now:%Y-%m-%dT%H:%M:%S}"}}'
    )
    refused = await acts.authorize_approver(
        AuthorizeApproverInput(**FIELDS, signature=sig, signed_at=naive.signed_at)
    )
    assert refused.reason == "signature time has no timezone"
    future = now + timedelta(seconds=301)
    ahead = sign_decision(KEY, **FIELDS, signed_at=future)
    late = await acts.authorize_approver(
        AuthorizeApproverInput(**FIELDS, signature=ahead, signed_at=future)
    )
    assert not late.allowed and "window" in late.reason
