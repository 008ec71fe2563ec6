"""``recovery start --wait`` progress lines: what they say, that they say it once, and why a
request waits. The end-to-end behaviour (exit codes, Ctrl-C, --timeout) is tested through
the real CLI in tests/integration/test_cli_recovery_wait.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import antifragile
from antifragile.cli._render.recovery import Progress as _Progress
from antifragile.cli._render.recovery import show_status as _show_status
from antifragile.cli._render.recovery import why_queued as _why_queued
from antifragile.models.orchestrator import OrchestratorLimits, QueueView, RunningView
from antifragile.models.recovery import RecoveryState, RecoveryStatus, RecoveryStrategy
from tests.helpers import REPO

NOW = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)


def view(running: int, max_concurrent: int, pause_reason: str = "") -> QueueView:
    return QueueView(
        running=[
            RunningView(
                service=f"svc-{i}",
                workflow_id=f"recovery-svc-{i}",
                run_id=None,
                priority=1,
                enqueued_at=NOW,
                admitted_at=NOW,
                running_s=1.0,
                waited_s=0.0,
            )
            for i in range(running)
        ],
        waiting=[],
        waiting_total=1,
        max_concurrent=max_concurrent,
        paused=bool(pause_reason),
        pause_reason=pause_reason,
        limits=OrchestratorLimits(),
        admitted_total=running,
        finished={},
        recent_admissions=[],
        runs=1,
        history_length=10,
    )


def test_a_queued_request_names_the_busy_slots() -> None:
    assert _why_queued(view(2, 2)) == "a free slot (all 2 busy: svc-0, svc-1)"
    assert _why_queued(view(7, 7)).endswith("svc-4 and 2 more)")


def test_a_pause_is_the_reason_when_there_is_one() -> None:
    reason = "retry budget: 6 of 10 recent attempts failed; admissions resume at 07:05"
    assert _why_queued(view(0, 5, reason)) == reason


def test_with_free_slots_the_request_waits_for_its_turn() -> None:
    assert _why_queued(view(1, 5)) == "admission (requests ahead of it go first)"


def status(state: RecoveryState, attempt: int = 1, **kw: object) -> RecoveryStatus:
    return RecoveryStatus(
        service="payments",
        state=state,
        strategy=RecoveryStrategy.EXPONENTIAL_BACKOFF,
        priority=1,
        probe="probe:payments",
        attempt=attempt,
        max_attempts=3,
        attempts_in_round=attempt,
        **kw,  # type: ignore[arg-type]
    )


def test_each_change_is_one_line_and_a_person_is_asked_for_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress = _Progress("payments")
    later = datetime.now(UTC) + timedelta(seconds=30)
    backoff = status(
        RecoveryState.WAITING_BACKOFF, next_attempt_at=later, waiting_for="backoff", last_error="x"
    )
    _show_status(backoff, progress)
    _show_status(backoff, progress)  # same state: nothing new to say
    waiting = status(RecoveryState.AWAITING_APPROVAL, 3, waiting_for="approval: 3 attempts failed")
    _show_status(waiting, progress)
    _show_status(waiting, progress)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3, lines
    assert "WAITING_BACKOFF" in lines[0] and f"next attempt {later:%H:%M:%S} (in " in lines[0]
    assert "AWAITING_APPROVAL" in lines[1] and "approval: 3 attempts failed" in lines[1]
    assert lines[2].strip() == (
        "a person is needed: antifragile recovery approve payments --by NAME   "
        "(or: antifragile recovery reject payments --by NAME)"
    )
    assert progress.state == "AWAITING_APPROVAL"


def test_quiet_progress_prints_nothing_but_keeps_the_state(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress = _Progress("payments", quiet=True)
    _show_status(status(RecoveryState.AWAITING_APPROVAL), progress)
    assert capsys.readouterr().err == ""
    assert progress.state == "AWAITING_APPROVAL"


def test_start_recovery_is_not_public_api() -> None:
    # It bypasses the orchestrator's slots: the public way is request_recovery.
    assert "start_recovery" not in antifragile.__all__
    readme = (REPO / "README.md").read_text()
    assert "start_recovery" not in readme
    assert "request_recovery" in readme


# --- approve / reject payloads ------------------------------------------------------------------


async def test_without_a_key_a_decision_is_unsigned(monkeypatch: pytest.MonkeyPatch) -> None:
    from antifragile.cli._common import approval_signal

    monkeypatch.delenv("ANTIFRAGILE_APPROVER_KEY", raising=False)
    # Unsigned: nothing is read from the server, so no handle is needed.
    signal = await approval_signal(None, approver="bob", note="n", decision="approved")
    assert (signal.approver, signal.note, signal.signature, signal.signed_at) == (
        "bob",
        "n",
        "",
        None,
    )


async def test_a_short_key_is_refused_before_anything_is_sent() -> None:
    from antifragile.cli._common import approval_signal
    from antifragile.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 16 bytes"):
        await approval_signal(None, approver="bob", note="", decision="approved", key="short")


# --- --timeout: bad values are one line naming the flag, exit 2, before anything is sent ---------


async def test_bad_timeouts_are_one_line_naming_the_flag_and_exit_2() -> None:
    from tests.helpers import run_cli_batch

    values = ["0", "0s", "-1", "abc", "1x", "", " ", "nan", "1e3", "-5m"]
    base = ["recovery", "start", "svc", "--probe", "tcp://h:1", "--wait", "--timeout"]
    # An address where nothing listens: a value that got through would say so instead.
    env = {"PATH": "/usr/bin:/bin", "ANTIFRAGILE_TEMPORAL_ADDRESS": "127.0.0.1:1"}
    results = await run_cli_batch(env, [[*base, value] for value in values])
    for value, result in zip(values, results, strict=True):
        assert result.code == 2, (value, result)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --timeout: "), (value, result)
        assert result.stdout == ""
