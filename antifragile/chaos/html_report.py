"""A chaos report as one self-contained HTML file: charts above, the numbers below.

``antifragile chaos report ID --html FILE`` writes it; the demo writes one too. The file
loads nothing: the charts are inline SVG, the style is inline, and its Content Security
Policy (``default-src 'none'``) forbids the browser to fetch or run anything, so it opens
offline, from a mail attachment or a CI artifact, as it was written.

Why matplotlib, rendering SVG: it is the most widely kept Python plotting library, it
draws without a browser library (plotly's inline JavaScript is ~4 MB per file; the SVG
charts of a typical report are tens of kilobytes), its SVG is deterministic (fixed id salt,
no date) and text stays text. It is an optional dependency (``antifragile[report]``),
imported only when a report is rendered, so services embedding antifragile and
``antifragile --help`` never load it.

What the charts show is what a :class:`~antifragile.models.chaos.ChaosReport` holds: the
health samples over time (per source, the targets' own score where published), the
phases, the moments of injection, removal and recovery, the journal's events, and the
target's call samples (successes, failures and refusals per second, p50/p99 latency per
interval; see :mod:`antifragile.models.chaos_calls`). Calls seen, affected and refused per
instance and breaker openings per breaker are totals over the experiment. The page says
what it cannot show under the charts.

Every string that comes from the report (names, reasons, notes, journal lines) is
escaped: they are user input.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from antifragile.models.chaos import ChaosOutcome, ChaosReport


class ChartsUnavailableError(RuntimeError):
    """matplotlib is not installed: ``pip install 'antifragile[report]'``."""


MISSING = (
    "Call outcomes and latency over time are those of the target only, summed over the "
    "instances that publish call counters, at the resolution of the health checks. Breaker "
    "openings are counted per breaker; their times are those at which a health check saw "
    "a breaker of the target open or closed again (at most one interval late). The "
    "threshold of the health guard is not in the report."
)
"""What the charts cannot show, said on the page."""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 980px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.outcome { font-weight: bold; } .COMPLETED { color: #1e8449; } .bad { color: #c0392b; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
figcaption, .note { color: #555; font-size: .9em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { text-align: left; padding: .2em .8em .2em 0; vertical-align: top;
         border-bottom: 1px solid #eee; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.warn { color: #9a6700; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _t(value: datetime | None) -> str:
    return f"{value:%H:%M:%S}" if value else "-"


def _rows(pairs: Iterable[tuple[str, str]]) -> str:
    """Table rows of (label, already escaped HTML)."""
    return "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in pairs)


def _table(head: Iterable[str], rows: Iterable[Iterable[object]], numeric: set[int]) -> str:
    cols = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{cols}</tr></thead><tbody>{body}</tbody></table>"


def _summary(report: ChaosReport) -> str:
    """The rows of ``chaos report``'s table, as HTML."""
    rows: list[tuple[str, str]] = []
    outcome = report.outcome.value if report.outcome else "IN PROGRESS"
    css = "COMPLETED" if report.outcome is ChaosOutcome.COMPLETED else "bad"
    rows.append(
        (
            "outcome",
            f'<span class="outcome {css}">{_e(outcome)}</span> — {_e(report.reason or "-")}',
        )
    )
    rows.append(("experiment", _e(report.experiment_id + (" (rebuilt)" if report.rebuilt else ""))))
    rows.append(("fault", _e(f"{report.chaos_type.value} on {', '.join(report.blast_radius)}")))
    rows.append(
        (
            "duration",
            _e(
                f"{report.effective_duration_s:g}s planned "
                f"(requested {report.requested_duration_s:g}s)"
            ),
        )
    )
    if report.injection_failed:
        rows.append(
            ("injection", f'<span class="bad">failed</span>: {_e(report.injection_failed)}')
        )
    active = report.fault_active_s
    bound = report.cleanup.method == "expired" and report.cleanup.confirmed is not True
    if active is None:
        rows.append(("fault active", "-"))
    else:
        rows.append(
            ("fault active", _e(f"at most {active:g}s (lease TTL)" if bound else f"{active:g}s"))
        )
    removed = None if report.injected_at is None else report.removed_at
    rows.append(("injected / removed", _e(f"{_t(report.injected_at)} / {_t(removed)}")))
    confirmed = {True: "; confirmed", False: "; NOT confirmed", None: ""}[report.cleanup.confirmed]
    detail = f" ({report.cleanup.detail})" if report.cleanup.detail else ""
    rows.append(("cleanup", _e(report.cleanup.method + confirmed + detail)))
    if report.instances_guarding is not None or report.instances_saw_fault is not None:
        g, saw = report.instances_guarding, report.instances_saw_fault
        rows.append(
            (
                "instances",
                _e(
                    f"{'-' if g is None else g} guarding at injection, "
                    f"{'-' if saw is None else saw} counted calls under the fault"
                ),
            )
        )
    low = report.health_lowest
    rows.append(("lowest health", _e(f"{low:.2f}" if low is not None else "-")))
    ttr = report.time_to_recover_s
    if ttr is not None:
        rows.append(("time to recover", _e(f"{ttr:g}s")))
    elif report.health_dropped is False:
        rows.append(("time to recover", "- (health never dropped)"))
    else:
        rows.append(("time to recover", "-"))
    recs = ", ".join(f"{r.workflow_id} {r.status} {r.state}" for r in report.recovery_workflows)
    rows.append(("recoveries", _e(recs or "-")))
    rows += [("warning", f'<span class="warn">{_e(w)}</span>') for w in report.warnings]
    return f"<table>{_rows(rows)}</table>"


def _calls(report: ChaosReport) -> str:
    names = sorted(set(report.calls_seen) | set(report.calls_affected) | set(report.calls_refused))
    if not names:
        return '<p class="note">No calls were counted.</p>'
    rows = [
        (
            n,
            f"{report.calls_seen.get(n, 0):,}",
            f"{report.calls_affected.get(n, 0):,}",
            f"{report.calls_refused.get(n, 0):,}",
        )
        for n in names
    ]
    return _table(("instance", "seen", "affected", "refused"), rows, {1, 2, 3})


def _breakers(report: ChaosReport) -> str:
    counts = dict(report.breaker_openings)
    for name in report.breakers_opened:
        counts.setdefault(name, 1)
    if not counts:
        return '<p class="note">No breaker opened.</p>'
    return _table(("breaker", "times opened"), sorted(counts.items()), {1})


def _seconds(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    return f"{max(0.0, (end - start).total_seconds()):g}s"


def _learning(report: ChaosReport) -> str:
    """The experiment's measurements and the advice, from the target's ledger."""
    learning = report.learning
    if learning is None:
        return ""
    rows: list[tuple[str, str]] = []
    o = learning.observation
    if o is not None:
        rows.append(("time to detect", _e(_seconds(o.fault_start, o.detected_at))))
        rows.append(("time to recover", _e(_seconds(o.fault_end, o.recovered_at))))
        rows.append(("calls failed / refused", _e(f"{o.calls_failed:,} / {o.calls_refused:,}")))
        rows.append(("latency under the fault", _e(learning.fault_latency)))
    if learning.note:
        rows.append(("note", f'<span class="warn">{_e(learning.note)}</span>'))
    advice = _table(
        ("setting", "current", "recommended", "reason"),
        (
            (
                a.setting,
                "-" if a.current is None else f"{a.current:g}",
                "-" if a.recommended is None else f"{a.recommended:g}",
                a.reason,
            )
            for a in learning.advice
        ),
        {1, 2},
    )
    return (
        f"<h2>What it taught (ledger of {_e(learning.dependency)})</h2>"
        f"<table>{_rows(rows)}</table>" + (advice if learning.advice else "")
    )


def _charts(report: ChaosReport) -> tuple[str, str, str, str, str]:
    try:
        from antifragile.chaos import _report_charts as charts
    except ImportError as exc:  # matplotlib missing (the `report` extra)
        raise ChartsUnavailableError(
            f"the HTML report needs matplotlib ({exc.name or exc} is not installed): "
            "pip install 'antifragile[report]'"
        ) from None
    return charts.all_charts(report)


def render_html(report: ChaosReport) -> str:
    """The report as one self-contained HTML page.

    Raises:
        ChartsUnavailableError: matplotlib is not installed.
    """
    health, calls, breakers, outcomes, latency = _charts(report)
    title = f"Chaos report: {report.name}"
    phases = _table(
        ("phase", "entered", "left", "seconds"),
        (
            (
                p.phase.value,
                _t(p.entered_at),
                _t(p.left_at),
                f"{(p.left_at - p.entered_at).total_seconds():.1f}" if p.left_at else "-",
            )
            for p in report.phases
        ),
        {3},
    )
    journal = _table(
        ("#", "at", "phase", "event"),
        ((n, _t(e.at), e.phase.value, e.message) for n, e in enumerate(report.events, 1)),
        {0},
    )
    started = f"{report.started_at:%Y-%m-%d %H:%M:%S %Z}".strip()
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{_e(title)}</h1>
<p class="note">{_e(report.experiment_id)} — started {_e(started)}, \
{_e(len(report.health_timeline))} health samples, {_e(len(report.events))} journal events</p>
{_summary(report)}
<h2>Health over time</h2>
<figure>{health}<figcaption>Health score per source (the targets' own breakers where \
published); phases shaded; dashed lines: fault injected, removed, health back. The ticks \
along the bottom are the journal's events, numbered as in the journal below.</figcaption>\
</figure>
<h2>Call outcomes per second (the target)</h2>
<figure>{outcomes}<figcaption>Calls of the target that succeeded, failed and were refused \
per second, between two health checks, over every instance publishing call counters; \
phases shaded; dashed lines: fault injected, removed, health back; dotted: a target's \
breaker seen open, then closed again.</figcaption></figure>
<h2>Latency over time (the target)</h2>
<figure>{latency}<figcaption>p50 and p99 of the target's call latency between two health \
checks (upper bound of the log bucket holding the rank: at most 19 % above the true \
value).</figcaption></figure>
<h2>Calls</h2>
<figure>{calls}<figcaption>Calls through guards in the blast radius, per instance, \
totals over the whole experiment.</figcaption></figure>
{_calls(report)}
<h2>Breakers</h2>
<figure>{breakers}<figcaption>Times each breaker opened during the experiment.\
</figcaption></figure>
{_breakers(report)}
<p class="note"><strong>Not in this report:</strong> {_e(MISSING)}</p>
{_learning(report)}
<h2>Phases</h2>
{phases}
<h2>Journal</h2>
{journal}
</body>
</html>
"""


def write_html(report: ChaosReport, path: Path) -> int:
    """Write the report's HTML page to ``path``; returns its size in bytes.

    Raises:
        ChartsUnavailableError: matplotlib is not installed.
        OSError: the file cannot be written.
    """
    data = render_html(report).encode("utf-8")
    path.write_bytes(data)
    return len(data)
