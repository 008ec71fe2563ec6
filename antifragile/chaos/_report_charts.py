"""The charts of the HTML chaos report, drawn by matplotlib as inline SVG.

Only :mod:`antifragile.chaos.html_report` imports this module, and only when a report is
rendered: matplotlib (~0.3 s of imports) is never loaded by ``antifragile --help`` or by
a service. Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot:
no global state, no GUI backend). The SVG is deterministic: no date in its metadata and
element ids hashed with a fixed salt, so one report always renders to the same bytes.

Times on every chart are seconds since the experiment started.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from datetime import datetime
from itertools import pairwise
from typing import Any

import matplotlib as mpl
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from antifragile.models.chaos import ChaosPhase, ChaosReport

WIDTH_IN = 10.0
"""Width of every chart, inches (at 72 px per inch in SVG: 720 px)."""
HEALTH_HEIGHT_IN = 3.6
"""Height of the health chart, inches."""
BAR_HEIGHT_IN = 0.45
"""Height per bar group of the call and breaker charts, inches (plus a margin)."""

LABEL_MIN_SHARE = 0.08
"""A phase narrower than this share of the chart is shaded but not named."""

PHASE_COLOURS: dict[ChaosPhase, str] = {
    ChaosPhase.VALIDATING: "#eeeeee",
    ChaosPhase.AWAITING_APPROVAL: "#fff3c4",
    ChaosPhase.STEADY_STATE_BEFORE: "#dcefdc",
    ChaosPhase.INJECTING: "#f7c6c6",
    ChaosPhase.RUNNING: "#f3d1d1",
    ChaosPhase.CLEANING_UP: "#d9e3f5",
    ChaosPhase.VERIFYING_RECOVERY: "#e3dcf3",
}
"""Background of each phase on the health chart; terminal phases are not shaded."""

_RC: dict[Any, Any] = {  # keys: matplotlib's rcParams names
    "text.parse_math": False,  # names are user input: a "$" is a dollar, not TeX
    "svg.fonttype": "none",  # text stays text: small, selectable, searchable
    "svg.hashsalt": "antifragile-chaos-report",  # stable element ids
    "font.size": 9.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


_NO_METADATA: dict[str, Any] = dict.fromkeys(("Creator", "Date", "Format", "Type"))
"""No RDF metadata block: no date (stable bytes) and no URL (purl.org, matplotlib.org)."""


def _s(report: ChaosReport, at: datetime) -> float:
    """Seconds from the experiment's start to ``at``."""
    return (at - report.started_at).total_seconds()


def _svg(fig: Figure, gid: str) -> str:
    """The figure as an ``<svg id=gid>`` element (without the XML prolog and doctype)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata=_NO_METADATA, bbox_inches="tight")
    text = buf.getvalue()
    text = text[text.index("<svg") + len("<svg ") :]
    # Three SVGs share one page: every id (matplotlib's figure_1, axes_1, …) and every
    # reference to one get the chart's prefix. Only inside tags: text content (user
    # input, escaped by matplotlib) has no "<" or ">", and is left as it was written.

    def prefixed(tag: re.Match[str]) -> str:
        t = re.sub(r'(\s)id="', rf'\1id="{gid}-', tag.group(0))
        return t.replace('href="#', f'href="#{gid}-').replace("url(#", f"url(#{gid}-")

    text = re.sub(r"<[^<>]*>", prefixed, text)
    return f'<svg id="{gid}" role="img" {text}'


def _shade_phases(ax: Axes, report: ChaosReport, end_s: float) -> None:
    """Shade each non-terminal phase and name it at the top of the axes."""
    for n, p in enumerate(report.phases):
        colour = PHASE_COLOURS.get(p.phase)
        if colour is None:
            continue
        start = _s(report, p.entered_at)
        stop = _s(report, p.left_at) if p.left_at is not None else end_s
        if stop <= start:
            continue
        ax.axvspan(start, stop, color=colour, zorder=0, lw=0, gid=f"phase-{n}-{p.phase.value}")
        if (stop - start) < end_s * LABEL_MIN_SHARE:
            continue  # too narrow to name without overlapping its neighbours
        ax.text(
            (start + stop) / 2,
            1.01,
            p.phase.value.replace("_", " ").lower(),
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=7,
            color="#555555",
            clip_on=False,
        )


def _marks(report: ChaosReport) -> Iterable[tuple[float, str, str]]:
    """(seconds, label, colour) of the moments the report records."""
    if report.injected_at is not None and not report.injection_failed:
        yield _s(report, report.injected_at), "fault injected", "#c0392b"
    if report.injected_at is not None and report.removed_at is not None:
        yield _s(report, report.removed_at), "fault removed", "#2471a3"
    ended = report.cleanup.fault_ended_at
    if ended is not None and report.removed_at is not None and ended != report.removed_at:
        yield _s(report, ended), "fault ended (lease)", "#5d6d7e"
    if report.removed_at is not None and report.time_to_recover_s is not None:
        back = _s(report, report.removed_at) + report.time_to_recover_s
        yield back, f"health back (+{report.time_to_recover_s:g}s)", "#1e8449"


def all_charts(report: ChaosReport) -> tuple[str, str, str, str, str]:
    """The health, calls, breakers, call outcomes and latency charts, each an ``<svg>``."""
    with mpl.rc_context(_RC):
        return (
            health_chart(report),
            calls_chart(report),
            breakers_chart(report),
            outcomes_chart(report),
            latency_chart(report),
        )


def breaker_moments(report: ChaosReport) -> list[tuple[float, str, str]]:
    """(seconds, label, colour) where the targets' breakers were seen open, then closed.

    From the health samples' ``targets_score``: below 1 is a breaker seen open (or half
    open), 1 again is all closed. Seen at the health checks: at most one interval late.
    """
    out: list[tuple[float, str, str]] = []
    was_open = False
    for sample in report.health_timeline:
        if sample.targets_score is None:
            continue
        is_open = sample.targets_score < 1
        if is_open != was_open:
            label = "breaker seen open" if is_open else "breakers closed again"
            out.append((_s(report, sample.at), label, "#c0392b" if is_open else "#1e8449"))
        was_open = is_open
    return out


def outcome_rates(report: ChaosReport) -> list[tuple[float, float, float, float]]:
    """(seconds, ok/s, failed/s, refused/s) per interval between two call samples.

    A rate is the difference of two cumulative samples over their time difference
    (restarts are already handled in the samples), placed at the interval's end.
    """
    out = []
    samples = report.call_samples
    for a, b in pairwise(samples):
        dt = (b.at - a.at).total_seconds()
        if dt <= 0:
            continue
        out.append(
            (
                _s(report, b.at),
                (b.ok - a.ok) / dt,
                (b.failed - a.failed) / dt,
                (b.refused - a.refused) / dt,
            )
        )
    return out


def _time_axes(report: ChaosReport) -> tuple[Figure, Axes, float]:
    end_s = max(_s(report, report.ended_at), 1.0)
    fig = Figure(figsize=(WIDTH_IN, HEALTH_HEIGHT_IN * 0.8))
    ax = fig.add_subplot()
    _shade_phases(ax, report, end_s)
    for x, label, colour in [*_marks(report), *breaker_moments(report)]:
        dotted = label.startswith("breaker")
        ax.axvline(x, color=colour, lw=1.0, ls=":" if dotted else "--", zorder=2, label=label)
    ax.set_xlim(0, end_s * 1.02)
    ax.set_xlabel("seconds since the experiment started")
    return fig, ax, end_s


def outcomes_chart(report: ChaosReport) -> str:
    """Successes, failures and refusals per second of the target; phases shaded."""
    fig, ax, _ = _time_axes(report)
    rates = outcome_rates(report)
    kinds = (("succeeded", "#27ae60"), ("failed", "#c0392b"), ("refused", "#8e44ad"))
    for k, (label, colour) in enumerate(kinds):
        ax.plot(
            [r[0] for r in rates],
            [r[k + 1] for r in rates],
            drawstyle="steps-pre",
            lw=1.4,
            color=colour,
            label=f"{label} / s",
            gid=f"outcomes-{label}",
            zorder=3,
        )
    ax.set_ylabel("target's calls per second")
    ax.set_ylim(bottom=0)
    if not rates:
        ax.text(0.5, 0.5, "no call counters published", transform=ax.transAxes, ha="center")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    return _svg(fig, "chart-outcomes")


def latency_chart(report: ChaosReport) -> str:
    """p50 and p99 latency of the target's calls per interval; phases shaded."""
    fig, ax, _ = _time_axes(report)
    drawn = False
    for name, colour in (("p50", "#2471a3"), ("p99", "#e67e22")):
        points = [
            (_s(report, c.at), v)
            for c in report.call_samples
            if (v := getattr(c, f"{name}_ms")) is not None
        ]
        drawn = drawn or bool(points)
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker="o",
            markersize=2.5,
            lw=1.2,
            color=colour,
            label=f"{name} (bucket bound)",
            gid=f"latency-{name}",
            zorder=3,
        )
    ax.set_ylabel("target's latency, ms")
    if drawn:
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no call latency recorded", transform=ax.transAxes, ha="center")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    return _svg(fig, "chart-latency")


def health_chart(report: ChaosReport) -> str:
    """Health score over time, one line per source; phases shaded, moments marked.

    Each health source (a process's ``signal:…``, ``fleet``, ``probe``) is its own series;
    ``targets`` is the score of the targets' own breakers where the source published it.
    A sample whose source said unhealthy is a red cross. Journal events are the ticks
    along the bottom, numbered as in the journal table.
    """
    end_s = max(_s(report, report.ended_at), 1.0)
    fig = Figure(figsize=(WIDTH_IN, HEALTH_HEIGHT_IN))
    ax = fig.add_subplot()
    _shade_phases(ax, report, end_s)
    series: dict[str, tuple[list[float], list[float]]] = {}
    unhealthy: tuple[list[float], list[float]] = ([], [])
    for sample in report.health_timeline:
        t = _s(report, sample.at)
        if sample.score is not None:
            xs, ys = series.setdefault(sample.source or "health", ([], []))
            xs.append(t)
            ys.append(sample.score)
        if sample.targets_score is not None:
            xs, ys = series.setdefault(f"{sample.source or 'health'} (targets)", ([], []))
            xs.append(t)
            ys.append(sample.targets_score)
        if not sample.healthy:
            unhealthy[0].append(t)
            unhealthy[1].append(sample.score if sample.score is not None else 0.0)
    for i, (source, (xs, ys)) in enumerate(sorted(series.items())):
        ax.plot(
            xs,
            ys,
            drawstyle="steps-post",
            marker="o",
            markersize=2.5,
            lw=1.4,
            label=source,
            gid=f"health-{i}",
            zorder=3,
        )
    if unhealthy[0]:
        ax.scatter(*unhealthy, marker="x", color="#c0392b", zorder=4, label="unhealthy")
    for x, label, colour in _marks(report):
        ax.axvline(x, color=colour, lw=1.2, ls="--", zorder=2, label=label)
    for n, event in enumerate(report.events, start=1):
        x = _s(report, event.at)
        ax.plot([x, x], [-0.06, -0.02], color="#555555", lw=0.8, clip_on=False)
        if len(report.events) <= 30:
            ax.text(x, -0.07, str(n), ha="center", va="top", fontsize=6, color="#555555")
    ax.set_xlim(0, end_s * 1.02)
    ax.set_ylim(-0.12, 1.05)
    ax.set_xlabel("seconds since the experiment started")
    ax.set_ylabel("health score")
    if not series:
        ax.text(0.5, 0.5, "no health score recorded", transform=ax.transAxes, ha="center")
        return _svg(fig, "chart-health")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    return _svg(fig, "chart-health")


def calls_chart(report: ChaosReport) -> str:
    """Calls seen, affected and refused per instance (totals over the experiment)."""
    instances = sorted(set(report.calls_seen) | set(report.calls_affected))
    instances += sorted(set(report.calls_refused) - set(instances))
    fig = Figure(figsize=(WIDTH_IN, 0.9 + BAR_HEIGHT_IN * max(1, len(instances))))
    ax = fig.add_subplot()
    kinds = (
        ("seen", report.calls_seen, "#95a5a6"),
        ("affected by the fault", report.calls_affected, "#e67e22"),
        ("refused by a guard", report.calls_refused, "#8e44ad"),
    )
    height = 0.8 / len(kinds)
    for k, (label, counts, colour) in enumerate(kinds):
        ys = [i + (k - 1) * height for i in range(len(instances))]
        values = [counts.get(name, 0) for name in instances]
        bars = ax.barh(ys, values, height=height, color=colour, label=label)
        for j, bar in enumerate(bars):
            bar.set_gid(f"calls-{k}-{j}")
        ax.bar_label(bars, fmt="{:,.0f}", fontsize=7, padding=2)
    ax.set_yticks(range(len(instances)), instances)
    ax.invert_yaxis()
    ax.set_xlabel("calls (whole experiment)")
    if not instances:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no calls counted", transform=ax.transAxes, ha="center")
        return _svg(fig, "chart-calls")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    return _svg(fig, "chart-calls")


def breakers_chart(report: ChaosReport) -> str:
    """How many times each breaker opened (every opening counted)."""
    counts = dict(report.breaker_openings)
    for name in report.breakers_opened:  # reports before openings were counted: once each
        counts.setdefault(name, 1)
    names = sorted(counts)
    fig = Figure(figsize=(WIDTH_IN, 0.9 + BAR_HEIGHT_IN * max(1, len(names))))
    ax = fig.add_subplot()
    bars = ax.barh(range(len(names)), [counts[n] for n in names], color="#c0392b", height=0.3)
    for j, bar in enumerate(bars):
        bar.set_gid(f"breakers-{j}")
    ax.bar_label(bars, fontsize=7, padding=2)
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(max(1, len(names)) - 0.5, -0.5)  # top to bottom; one bar is not a wall
    ax.set_xlabel("times opened")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not names:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no breaker opened", transform=ax.transAxes, ha="center")
    return _svg(fig, "chart-breakers")
