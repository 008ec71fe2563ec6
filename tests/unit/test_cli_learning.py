"""``antifragile advise`` / ``score``: rendering, the JSON shape, bad input, settings overlay."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from antifragile.cli import app
from antifragile.cli._render.learning import advice_table, evidence_text, recommended_text
from antifragile.cli.learning import advice_report, overlay
from antifragile.models.learning import (
    Advice,
    ConfigVersion,
    CurrentSettings,
    DependencySettings,
    Evidence,
    OutageObservation,
    ProfileCounters,
    ProfileLimits,
    ProfileView,
)
from workflows.dependency_profile import Ledger

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _view(seconds: tuple[float, ...] = (5.5, 6.0, 6.5)) -> ProfileView:
    outages = [
        OutageObservation(
            dependency="db",
            source_id=f"o{i}",
            started_at=NOW - timedelta(minutes=10 * (i + 1)),
            recovered_at=NOW - timedelta(minutes=10 * (i + 1)) + timedelta(seconds=s),
            outcome="SUCCEEDED",
        )
        for i, s in enumerate(seconds)
    ]
    return Ledger("db", ProfileLimits(), outages, ProfileCounters()).view(NOW)


def _version(**settings: float) -> ConfigVersion:
    return ConfigVersion(
        dependency="db", version=3, settings=DependencySettings(**settings), by="t", at=NOW
    )


@pytest.mark.parametrize(
    ("version", "open_s", "rate"),
    [
        (None, 30.0, 0.5),
        (_version(open_duration_s=7.0), 7.0, 0.5),
        (_version(failure_rate_threshold=0.2), 30.0, 0.2),
    ],
)
def test_overlay_table(version: ConfigVersion | None, open_s: float, rate: float) -> None:
    current = overlay(version)
    assert (current.open_duration_s, current.failure_rate_threshold) == (open_s, rate)


def test_a_version_in_force_is_the_current_value() -> None:
    view = _view()
    plain = advice_report(view, None, NOW)
    assert plain.settings_source == "library defaults" and plain.advice == view.advice
    over = advice_report(view, _version(open_duration_s=7.0), NOW - timedelta(days=1))
    assert over.settings_source == "config version 3"
    (item,) = [a for a in over.advice if a.setting == "breaker.open_duration_s"]
    assert item.current == 7.0 and item.recommended is not None
    assert 4.5 <= item.recommended <= 7.5


def test_an_empty_ledger_has_no_score_and_only_gaps() -> None:
    view = Ledger("db", ProfileLimits(), [], ProfileCounters()).view(NOW)
    assert view.score is not None and view.score.score is None
    assert all(a.recommended is None for a in view.advice)


@pytest.mark.parametrize(
    ("evidence", "text"),
    [
        (Evidence(observations=0), "0 obs"),
        (Evidence(observations=1, window_start=NOW, window_end=NOW), "1 obs, 2026-11-30 12:00 UTC"),
        (
            Evidence(observations=2, window_start=NOW - timedelta(hours=1), window_end=NOW),
            "2 obs, 2026-11-30 11:00 → 2026-11-30 12:00 UTC",
        ),
    ],
)
def test_evidence_text(evidence: Evidence, text: str) -> None:
    assert evidence_text(evidence) == text


def test_markup_in_reasons_is_shown_as_written() -> None:
    from rich.console import Console

    item = Advice(
        dependency="db",
        setting="x",
        current=1.0,
        recommended=1.0,
        reason="E[lag] 0.5 s",
        evidence=Evidence(observations=0),
    )
    assert recommended_text(item) == "1 (keep)"
    report = advice_report(_view(), None, NOW).model_copy(update={"advice": [item]})
    console = Console(width=200, record=True)
    console.print(advice_table(report))
    assert "E[lag] 0.5 s" in console.export_text()


@pytest.mark.parametrize("command", ["advise", "score"])
@pytest.mark.parametrize("bad", ["", "a b", "x\ty"])
def test_bad_dependency_is_one_line_exit_2(command: str, bad: str) -> None:
    result = CliRunner().invoke(app, [command, bad, "--json"])
    assert result.exit_code == 2
    assert "bad dependency" in result.output and "Traceback" not in result.output


def test_json_shape_of_a_report() -> None:
    doc = json.loads(advice_report(_view(), None, NOW).model_dump_json())
    assert set(doc) == {"dependency", "settings_source", "note", "current", "advice"}
    assert set(doc["advice"][0]) >= {"setting", "current", "recommended", "reason", "evidence"}
    assert CurrentSettings.model_validate(doc["current"]) == CurrentSettings()
