"""The README's Walkthrough shows what the program prints (issue 15: a newcomer copies it)."""

from __future__ import annotations

from pathlib import Path

from antifragile.stack.devstack import DevStack

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.index("\n## ", start + 1)
    return README[start:end]


def test_the_walkthrough_banner_is_the_one_dev_prints() -> None:
    walkthrough = _section("Walkthrough")
    for line in DevStack().banner().splitlines():
        if "Data  " in line:  # the reader's own directory
            continue
        assert line in walkthrough, line


def test_a_second_stack_s_try_lines_point_at_its_own_ui() -> None:
    banner = DevStack(port=7300, ui_port=8300, redis_port=6400).banner()
    export = (
        "  export ANTIFRAGILE_TEMPORAL_ADDRESS=127.0.0.1:7300 "
        "ANTIFRAGILE_REDIS_URL=redis://127.0.0.1:6400/0 ANTIFRAGILE_UI_URL=http://127.0.0.1:8300"
    )
    assert export in banner.splitlines()
    assert export in _section("Walkthrough")
    # A Redis the user configured (its URL may hold a password) is never echoed.
    configured = DevStack(port=7300, ui_port=8300, redis_url="redis://:s3cret@db:6379/0")
    assert "s3cret" not in configured.banner()


def test_the_walkthrough_says_how_to_reach_the_venv_s_commands() -> None:
    assert "source .venv/bin/activate" in _section("Walkthrough")
    assert "source .venv/bin/activate" in _section("Two commands")


def test_the_walkthrough_shows_a_recovery_started_by_a_breaker_with_the_service_s_probe() -> None:
    walkthrough = _section("Walkthrough")
    assert "guarded_service --targets demo-db --probe demo-db=" in walkthrough
    assert "recovery-demo-db COMPLETED SUCCEEDED" in walkthrough
    # Ids as the program makes them: chaos-{type}-{target}-{8 hex}.
    assert "chaos-error-demo-db-ed31d58c" in walkthrough


def test_a_finished_recovery_in_the_walkthrough_shows_no_round() -> None:
    assert "round: 0 of" not in _section("Walkthrough")
