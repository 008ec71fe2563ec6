"""Traffic window and harvest grace are settings: validated, and what runtime and worker use."""

from __future__ import annotations

import os
from typing import Any

import pytest
from pydantic import ValidationError

from antifragile.demo.last_act import (
    DEMO_HARVEST_GRACE_S,
    DEMO_PUBLISH_INTERVAL_S,
    DEMO_TRAFFIC_WINDOW_S,
)
from antifragile.demo.stack import DemoOptions, DemoStack
from antifragile.errors import describe_validation_error
from antifragile.inprocess.runtime import Runtime
from antifragile.settings import DEFAULT_HARVEST_GRACE_S, DEFAULT_TRAFFIC_WINDOW_S, Settings
from tests.helpers import run_cli
from workers.main import traffic_harvester


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ANTIFRAGILE_"):
            monkeypatch.delenv(name)


def test_defaults_are_60_and_10_and_the_environment_sets_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clean_env(monkeypatch)
    s = Settings()
    assert (s.traffic_window_s, s.harvest_grace_s) == (60.0, 10.0)
    assert (DEFAULT_TRAFFIC_WINDOW_S, DEFAULT_HARVEST_GRACE_S) == (60.0, 10.0)
    monkeypatch.setenv("ANTIFRAGILE_TRAFFIC_WINDOW_S", "2")
    monkeypatch.setenv("ANTIFRAGILE_HARVEST_GRACE_S", "0.75")
    s = Settings()
    assert (s.traffic_window_s, s.harvest_grace_s) == (2.0, 0.75)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"traffic_window_s": 0},
            "traffic_window_s: traffic_window_s must be at least 0.5 seconds, got 0.0",
        ),
        ({"traffic_window_s": -5}, "traffic_window_s must be at least 0.5 seconds, got -5.0"),
        ({"traffic_window_s": 1e-300}, "must be at least 0.5 seconds, got 1e-300"),
        ({"traffic_window_s": "inf"}, "must be at least 0.5 seconds, got inf"),
        ({"traffic_window_s": "nan"}, "traffic_window_s must be at least 0.5 seconds, got nan"),
        ({"harvest_grace_s": 0}, "harvest_grace_s must be > 0 seconds, got 0.0"),
        ({"harvest_grace_s": 60}, "harvest_grace_s must be < traffic_window_s (60.0 s), got 60.0"),
        (
            {"traffic_window_s": 2, "harvest_grace_s": 3},
            "harvest_grace_s must be < traffic_window_s (2.0 s), got 3.0",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_field_and_value(
    monkeypatch: pytest.MonkeyPatch, given: dict[str, Any], message: str
) -> None:
    _clean_env(monkeypatch)
    with pytest.raises(ValidationError) as info:
        Settings(**given)
    text = describe_validation_error(info.value)
    assert message in text, text
    assert "\n" not in text


async def test_a_bad_variable_is_one_line_and_exit_2_on_the_cli() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTIFRAGILE_")}
    env |= {"ANTIFRAGILE_TRAFFIC_WINDOW_S": "2", "ANTIFRAGILE_HARVEST_GRACE_S": "2"}
    result = await run_cli(env, "health")
    assert result.code == 2, result.stdout + result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "harvest_grace_s" in line and "got 2.0" in line, line


def test_the_runtime_takes_its_window_from_its_settings_and_an_argument_wins() -> None:
    settings = Settings(traffic_window_s=2.5, harvest_grace_s=1)
    assert Runtime(settings, bridge=False, metering=False).traffic.window_s == 2.5
    explicit = Runtime(settings, bridge=False, metering=False, traffic_window_s=7)
    assert explicit.traffic.window_s == 7
    assert Runtime(Settings(), bridge=False, metering=False).traffic.window_s == 60.0


def test_the_workers_harvester_takes_window_and_grace_from_its_settings() -> None:
    settings = Settings(traffic_window_s=4, harvest_grace_s=1.5, task_queue="q")
    harvester = traffic_harvester(None, settings)  # type: ignore[arg-type]  # never used
    assert (harvester.window_s, harvester.grace_s, harvester.task_queue) == (4, 1.5, "q")


def test_the_demo_runs_short_windows_its_snapshots_publish_well_inside_the_grace() -> None:
    settings = DemoStack(DemoOptions()).settings(Settings())
    assert (settings.traffic_window_s, settings.harvest_grace_s) == (
        DEMO_TRAFFIC_WINDOW_S,
        DEMO_HARVEST_GRACE_S,
    )
    Settings(traffic_window_s=settings.traffic_window_s, harvest_grace_s=settings.harvest_grace_s)
    assert DEMO_PUBLISH_INTERVAL_S < DEMO_HARVEST_GRACE_S < DEMO_TRAFFIC_WINDOW_S
