"""What ``antifragile advise`` and ``antifragile score`` print: rich tables.

Nothing here talks to a server: the commands hand over
:class:`~antifragile.models.learning.AdviceReport` and
:class:`~antifragile.models.learning.ResilienceScore` models.
"""

from __future__ import annotations

from datetime import UTC, datetime

from rich.markup import escape
from rich.table import Table

from antifragile.cli._common import console
from antifragile.models.learning import Advice, AdviceReport, Evidence, ResilienceScore


def value(number: float | None) -> str:
    """A setting's value for a table: ``-`` for none, else the shortest exact-looking form."""
    return "-" if number is None else f"{number:g}"


def _time(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M}"


def evidence_text(evidence: Evidence) -> str:
    """``N obs, FIRST → LAST UTC`` (minutes; one time when both are the same minute)."""
    text = f"{evidence.observations} obs"
    start, end = evidence.window_start, evidence.window_end
    if start is not None and end is not None:
        first, last = _time(start), _time(end)
        text += f", {first} UTC" if first == last else f", {first} → {last} UTC"
    return text


def recommended_text(item: Advice) -> str:
    """The recommended value, marked ``(keep)`` when it is the value in force."""
    if item.recommended is None:
        return "-"
    keep = item.current is not None and item.recommended == item.current
    return (
        f"{value(item.recommended)} (keep)" if keep else f"[bold]{value(item.recommended)}[/bold]"
    )


def advice_table(report: AdviceReport) -> Table:
    """One dependency's advice: setting, current, recommended, why, evidence."""
    table = Table(
        title=escape(f"{report.dependency}: advice against the {report.settings_source}"),
        title_justify="left",
    )
    for column in ("setting", "current", "recommended", "why", "evidence"):
        table.add_column(column, overflow="fold")
    for item in report.advice:
        why = item.reason + (f"; {item.expected_effect}" if item.expected_effect else "")
        table.add_row(
            escape(item.setting),
            value(item.current),
            recommended_text(item),
            escape(why),
            evidence_text(item.evidence),
        )
    return table


def _none_line(task_queue: str) -> str:
    return f"no dependency has a ledger on task queue {task_queue} yet: nothing observed"


def render_advice(reports: list[AdviceReport], task_queue: str) -> None:
    """Print a table per dependency (a line naming ``task_queue`` when there is none)."""
    if not reports:
        console.print(_none_line(task_queue), markup=False)
        return
    for report in reports:
        if report.advice:
            console.print(advice_table(report))
        else:
            console.print(f"{report.dependency}: no advice (nothing held in its ledger)")


def score_table(scores: list[ResilienceScore]) -> Table:
    """Dependency, score, trend and the evidence it rests on."""
    table = Table(title="resilience score (0-100, measured outcomes)", title_justify="left")
    for column in ("dependency", "score", "trend", "evidence", "detail"):
        table.add_column(column, overflow="fold")
    for s in scores:
        table.add_row(
            escape(s.dependency),
            "-" if s.score is None else f"{s.score:.1f}",
            "-" if s.trend is None else f"{s.trend:+.1f}",
            evidence_text(s.evidence),
            escape(s.evidence.detail),
        )
    return table


def render_scores(scores: list[ResilienceScore], task_queue: str) -> None:
    """Print the score table (a line naming ``task_queue`` when there is no dependency)."""
    if not scores:
        console.print(_none_line(task_queue), markup=False)
        return
    console.print(score_table(scores))
