"""``antifragile advise apply/revert``: bad ``--wait`` values are bad input (exit 2, one line).

Checked before any connection: Temporal is pointed at a closed port, so a command that
got past the checks would say so instead.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from antifragile.cli import app


@pytest.fixture(autouse=True)
def _no_temporal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTIFRAGILE_TEMPORAL_ADDRESS", "127.0.0.1:1")


@pytest.mark.parametrize("command", ["apply", "revert"])
@pytest.mark.parametrize("wait", ["inf", "1e308", "nan", "-inf", "0", "-1", "86401"])
def test_a_wait_out_of_range_is_one_line_exit_2(command: str, wait: str) -> None:
    result = CliRunner().invoke(app, ["advise", command, "dep", "--by", "alice", "--wait", wait])
    assert result.exit_code == 2, result.output
    assert "--wait" in result.output
    assert "Traceback" not in result.output
    assert "Temporal" not in result.output


@pytest.mark.parametrize("wait", ["0.1", "86400"])
def test_a_wait_in_range_goes_on_to_temporal(wait: str) -> None:
    result = CliRunner().invoke(app, ["advise", "apply", "dep", "--by", "alice", "--wait", wait])
    assert result.exit_code == 2
    assert "cannot reach Temporal" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["advise", "apply", "a" * 1000, "--by", "alice"],
        ["advise", "revert", "a" * 1000, "--by", "alice"],
        ["advise", "history", "a" * 1000],
        ["advise", "a" * 1000],
        ["score", "a" * 1000],
    ],
)
def test_a_dependency_too_long_for_a_ledger_id_is_bad_input(args: list[str]) -> None:
    """``profile-{dependency}`` over Temporal's 1000-character id limit: exit 2 at once."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "bad dependency" in result.output and "Temporal" not in result.output
