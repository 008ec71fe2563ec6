"""What the CLI prints for the slips a newcomer makes (issue 15): one line that says what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from antifragile.chaos.scenario import load_scenario
from antifragile.cli._common import parse_duration_s
from antifragile.cli._render.chaos import render_experiments, render_schedules
from antifragile.cli._render.recovery import render_listing, render_status
from antifragile.errors import ConfigError
from antifragile.models.chaos_fleet import ScheduleInfo
from antifragile.models.recovery import RecoveryState, RecoveryStatus, RecoveryStrategy
from antifragile.orchestrator.client import RecoveryListing
from antifragile.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTIFRAGILE_")}
    env["ANTIFRAGILE_TEMPORAL_ADDRESS"] = "127.0.0.1:1"  # never reached: input is refused first
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "antifragile", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_duration_without_a_unit_is_refused_naming_the_flag_and_both_readings() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration_s("500", "--initial-delay")
    assert str(caught.value) == "--initial-delay: '500' has no unit; write 500ms or 500s"
    assert parse_duration_s("500ms", "--initial-delay") == 0.5
    assert parse_duration_s("2m", "--duration") == 120


def test_a_bare_initial_delay_on_the_command_line_is_one_line_exit_2() -> None:
    done = _cli("recovery", "start", "x", "--probe", "tcp://127.0.0.1:9", "--initial-delay", "500")
    assert done.returncode == 2
    assert done.stderr == "error: --initial-delay: '500' has no unit; write 500ms or 500s\n"


def test_a_check_across_fields_never_shows_a_cut_off_dict() -> None:
    done = _cli(
        "recovery", "start", "x", "--probe", "tcp://127.0.0.1:9", "--initial-delay", "5000s"
    )
    assert done.returncode == 2
    assert "initial_delay_ms (5000000)" in done.stderr
    assert "{" not in done.stderr and "..." not in done.stderr, done.stderr


def test_a_bad_choice_reads_as_the_cli_s_own_words() -> None:
    done = _cli("recovery", "start", "x", "--probe", "tcp://127.0.0.1:9", "--strategy", "bogus")
    assert done.returncode == 2
    assert done.stderr.startswith("error: Invalid value for '--strategy': 'bogus' is not one of")
    assert "Value error" not in done.stderr


def test_help_shows_no_type_next_to_a_flag() -> None:
    done = _cli("recovery", "start", "--help")
    assert done.returncode == 0
    wait = next(
        line for line in done.stdout.splitlines() if "--wait" in line and "--no-wait" in line
    )
    assert "<bool>" not in done.stdout, wait
    assert "<int>" in done.stdout  # a value-taking option still says what it takes


@pytest.mark.parametrize(
    ("suffix", "text", "where"),
    [
        (".yaml", "name: x\nchaos_type: LATENCY\n  target: [db\n", "line 3, column 9"),
        (".json", '{"name": "x",\n "target": ,}', "line 2, column 12"),
    ],
)
def test_a_scenario_file_that_does_not_parse_names_the_line(
    tmp_path: Path, suffix: str, text: str, where: str
) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    assert where in str(caught.value), caught.value


def _status(state: RecoveryState, **changes: object) -> RecoveryStatus:
    fields: dict[str, object] = {
        "service": "payments",
        "state": state,
        "strategy": RecoveryStrategy.EXPONENTIAL_BACKOFF,
        "priority": 5,
        "probe": "tcp://127.0.0.1:9",
        "attempt": 1,
        "max_attempts": 5,
        "attempts_in_round": 0,
        "next_attempt_at": datetime.now(UTC) - timedelta(seconds=1575),
    }
    fields.update(changes)
    return RecoveryStatus.model_validate(fields)


@pytest.mark.parametrize("state", [RecoveryState.CANCELLED, RecoveryState.SUCCEEDED])
def test_a_finished_recovery_shows_no_round_and_no_next_attempt(
    state: RecoveryState, capsys: pytest.CaptureFixture[str]
) -> None:
    render_status(_status(state), Settings())
    out = capsys.readouterr().out
    assert "next attempt" not in out and "ago" not in out, out
    assert "round" not in out, out


def test_a_running_recovery_still_shows_its_round_and_next_attempt(
    capsys: pytest.CaptureFixture[str],
) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    render_status(
        _status(RecoveryState.WAITING_BACKOFF, attempts_in_round=2, next_attempt_at=when),
        Settings(),
    )
    out = capsys.readouterr().out
    assert "round: 2 of 5" in out and "next attempt" in out, out


def test_empty_listings_are_one_line_not_bare_headers(capsys: pytest.CaptureFixture[str]) -> None:
    render_listing(RecoveryListing(view=None), json_out=False)
    render_experiments([])
    render_schedules([])
    assert capsys.readouterr().out == "no recoveries\nno chaos experiments\nno chaos schedules\n"


def test_paused_reads_yes_or_no(capsys: pytest.CaptureFixture[str]) -> None:
    render_schedules(
        [
            ScheduleInfo(name="a", schedule_id="chaos-schedule-a", cron="0 3 * * 1", paused=True),
            ScheduleInfo(name="b", schedule_id="chaos-schedule-b", cron="0 3 * * 1", paused=False),
        ]
    )
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if "0 3" in line}
    assert " yes " in rows["a"] and " no " in rows["b"], rows
    assert "True" not in rows["a"] and "False" not in rows["b"]


def test_instances_without_breakers_get_a_line_not_an_empty_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from antifragile.cli._common import console
    from antifragile.cli.health import render

    console.print(render([{"instance": "api-1", "status": "HEALTHY", "health_score": 1.0}]))
    out = capsys.readouterr().out
    assert "api-1" in out and "no breakers reported" in out, out
    assert "Breakers" not in out, out


def test_the_license_is_an_spdx_string_so_installs_print_no_deprecation_warning() -> None:
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    # A table ({text = ...}) made setuptools warn on every install; a string needs >= 77.
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in pyproject["build-system"]["requires"]
