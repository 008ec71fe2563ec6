"""The shared command body (``run_command``, ``command_errors``) and the two worker entry
points (``antifragile worker``, ``python -m workers``) failing alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from antifragile.cli._common import CommandFailed, command_errors, fail, run_command
from antifragile.errors import ConfigError
from antifragile.fleet_health import RedisUnreachable
from antifragile.settings import Settings
from antifragile.stack.processes import free_port

REPO = Path(__file__).resolve().parents[2]


def test_run_command_returns_what_the_work_returned() -> None:
    async def work(settings: Settings) -> str:
        return settings.task_queue

    settings = Settings(task_queue="q-run-command")
    assert run_command(work, settings, temporal=False) == "q-run-command"


@pytest.mark.parametrize(
    ("error", "code"),
    [(ConfigError("bad flag"), 2), (CommandFailed("it failed"), 1)],
)
def test_known_errors_are_one_line_and_an_exit_code(
    error: Exception, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    async def work(_: Settings) -> None:
        raise error

    with pytest.raises(typer.Exit) as exited:
        run_command(work, Settings(), temporal=False)
    assert exited.value.exit_code == code
    assert capsys.readouterr().err == f"error: {error}\n"


def test_an_unknown_error_is_not_swallowed() -> None:
    async def work(_: Settings) -> None:
        raise LookupError("a bug")

    with pytest.raises(LookupError, match="a bug"):
        run_command(work, Settings(), temporal=False)


def test_an_unreachable_temporal_is_one_line_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{free_port()}"

    async def work(client: object, settings: Settings) -> None:
        raise AssertionError("never connected")

    with pytest.raises(typer.Exit) as exited:
        run_command(work, Settings(temporal_address=address), quiet_core=True)
    assert exited.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach Temporal at {address}"), err
    assert err.count("\n") == 1


def test_command_errors_prints_an_unreachable_redis_verbatim(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(typer.Exit) as exited, command_errors():
        raise RedisUnreachable("cannot reach [bold]redis://h:1[/bold]\n  refused")
    assert exited.value.exit_code == 2
    assert capsys.readouterr().err == "error: cannot reach [bold]redis://h:1[/bold] refused\n"


def test_command_errors_lets_an_exit_through() -> None:
    with pytest.raises(typer.Exit) as exited, command_errors():
        fail("no such thing")
    assert exited.value.exit_code == 2


@pytest.mark.parametrize(
    "argv",
    [["-m", "workers"], ["-c", "from antifragile.cli import main; main(['worker'])"]],
    ids=["python -m workers", "antifragile worker"],
)
def test_both_worker_entry_points_fail_alike(argv: list[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "ANTIFRAGILE_TEMPORAL_ADDRESS": address,
        "ANTIFRAGILE_TEMPORAL_NAMESPACE": "default",
        "ANTIFRAGILE_TASK_QUEUE": "antifragile",
        "NO_COLOR": "1",
    }
    proc = subprocess.run(
        [sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"worker: task queue antifragile on {address} (namespace default)",
        f"error: cannot reach Temporal at {address} (namespace default): connection refused",
    ]
    assert "Traceback" not in proc.stderr

    bad = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        env={**env, "ANTIFRAGILE_TEMPORAL_ADDRESS": "nope"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: bad ANTIFRAGILE_* setting: temporal_address")
    assert bad.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [["-m", "workers"], ["-c", "from antifragile.cli import main; main(['worker'])"]],
    ids=["python -m workers", "antifragile worker"],
)
def test_both_worker_entry_points_report_a_bad_setting_alike(argv: list[str]) -> None:
    """A bad value is shown (as before the layout change) unless it may carry a secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTIFRAGILE_")}
    shown = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        env={**env, "ANTIFRAGILE_METRICS_PORT": "abc"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 2
    assert shown.stderr.startswith("error: bad ANTIFRAGILE_* setting: metrics_port: ")
    assert shown.stderr.rstrip().endswith("(got 'abc')")
    hidden = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        env={**env, "ANTIFRAGILE_REDIS_URL": "http://user:hunter2@h/0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert hidden.returncode == 2
    assert hidden.stderr.startswith("error: bad ANTIFRAGILE_* setting: redis_url: ")
    assert "hunter2" not in hidden.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "workers"],
        ["-c", "from antifragile.cli import main; main(['worker'])"],
        ["-c", "from antifragile.cli import main; main(['setup'])"],
        ["-c", "from antifragile.cli import main; main(['recovery', 'list'])"],
    ],
    ids=["python -m workers", "antifragile worker", "antifragile setup", "recovery list"],
)
def test_an_unreadable_tls_file_is_one_line_not_a_traceback(
    argv: list[str], tmp_path: Path
) -> None:
    missing = tmp_path / "client.pem"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTIFRAGILE_")}
    env.update(
        ANTIFRAGILE_TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
        ANTIFRAGILE_TEMPORAL_TLS_CERT=str(missing),
        ANTIFRAGILE_TEMPORAL_TLS_KEY=str(missing),
    )
    proc = subprocess.run(
        [sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert f"error: temporal_tls_cert {missing}: No such file or directory" in proc.stderr
    assert proc.stderr.count("error:") == 1


def test_every_temporal_connection_of_a_command_uses_the_quiet_runtime() -> None:
    # Library code a command calls (chaos.client stopping schedules) connects with the
    # process's default runtime: run_command makes that the quiet one, WARN lines off.
    # In a child: the default runtime is process-wide.
    code = (
        "import temporalio.runtime as r\n"
        "from antifragile.cli._common import cli_runtime, run_command\n"
        "async def work(settings):\n"
        "    return r.Runtime.default() is cli_runtime()\n"
        "print(run_command(work, temporal=False))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTIFRAGILE_")}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "True", done.stderr
