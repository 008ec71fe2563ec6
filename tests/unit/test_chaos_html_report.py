"""The HTML chaos report: self-contained, charts drawn from the report, user text escaped."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from antifragile.chaos.html_report import MISSING, render_html, write_html
from antifragile.models.chaos import (
    ChaosEvent,
    ChaosOutcome,
    ChaosPhase,
    ChaosReport,
    ChaosType,
    PhaseRecord,
)
from tests.unit.chaos_report_sample import T0, at, sample_report
from tests.unit.test_cli_lazy import _modules_after

HOSTILE = "<script>alert('x')</script>&\"$x"
"""With an unmatched ``$``: matplotlib would read ``$…$`` as TeX (and fail on this one)."""


def test_the_page_loads_nothing_from_anywhere(tmp_path: Path) -> None:
    page = render_html(sample_report())
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"<(?:script|link|iframe|img|object|embed)\b", page, re.I)
    assert "@import" not in page and not re.search(r"url\((?!#)", page)  # local refs only
    # The browser may not fetch or run anything, whatever the page holds.
    assert "default-src 'none'" in page
    size = write_html(sample_report(), tmp_path / "r.html")
    assert size == len((tmp_path / "r.html").read_bytes()) and size < 200_000


def test_the_charts_are_inline_svg_drawn_from_the_report() -> None:
    page = render_html(sample_report())
    assert page.count("<svg") == 5, "health, calls, breakers, outcomes, latency"
    for gid in ("chart-health", "chart-calls", "chart-breakers"):
        assert f'id="{gid}"' in page
    # The phases are shaded, the health series drawn, the moments marked.
    for phase in ("STEADY_STATE_BEFORE", "RUNNING", "CLEANING_UP", "VERIFYING_RECOVERY"):
        assert re.search(rf'id="chart-health-phase-\d+-{phase}"', page)
    # fleet, fleet (targets)
    assert 'id="chart-health-health-0"' in page and 'id="chart-health-health-1"' in page
    for label in ("fault injected", "fault removed", "health back (+2.8s)", "unhealthy"):
        assert label in page
    assert 'id="chart-calls-calls-1-0"' in page and 'id="chart-breakers-breakers-0"' in page
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "ids are unique across the three SVGs"
    for ref in re.findall(r'(?:href="#|url\(#)([^")]+)', page):
        assert ref in ids, ref
    # Text stays text (svg.fonttype none): the instance's name is in the chart.
    assert re.search(r"<text[^>]*>demo-1</text>", page)


def test_the_numbers_are_below_the_charts() -> None:
    page = render_html(sample_report())
    numbers = page[page.index('id="chart-breakers"') :]
    for value in ("9,876", "4,312", "517", "2.8s", "0.35", "10.15s", "demo-1/demo-db: OPEN"):
        assert value in page
    assert "COMPLETED" in page and "07:00:02 / 07:00:12" in page
    assert re.search(r"<td>RUNNING</td><td>07:00:02</td><td>07:00:12</td><td[^>]*>10\.0</td>", page)
    assert "duration elapsed" in numbers
    assert (
        "Not in this report" in numbers
        and page.count("summed over the instances that publish call counters") == 1
    )
    assert MISSING.split(":")[0] in page


def test_every_string_from_the_report_is_escaped() -> None:
    report = sample_report(name=HOSTILE)
    report.reason = HOSTILE
    report.warnings = [HOSTILE]
    report.events.append(ChaosEvent(at=at(3), phase=ChaosPhase.RUNNING, message=HOSTILE))
    report.calls_seen[HOSTILE] = 1
    report.breaker_openings[HOSTILE] = 3
    page = render_html(report)
    assert "<script" not in page  # and it is shown escaped in every place below
    assert page.count("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;&quot;$x") == 10
    # In the charts too (an instance or breaker named by a process): escaped by matplotlib.
    charts = page[page.index('id="chart-calls"') : page.index("Not in this report")]
    assert charts.count(">&lt;script&gt;alert('x')&lt;/script&gt;&amp;\"$x</text>") == 2


def test_one_report_renders_to_the_same_bytes() -> None:
    assert render_html(sample_report()) == render_html(sample_report())


def test_a_report_with_nothing_measured_still_renders() -> None:
    """A run refused at validation: no injection, no health, no calls, no breaker."""
    report = ChaosReport(
        experiment_id="chaos-refused-1",
        name="refused",
        chaos_type=ChaosType.ERROR,
        target="demo-db",
        blast_radius=["demo-db"],
        outcome=ChaosOutcome.FAILED,
        reason="validation: target not allowed",
        requested_duration_s=5,
        effective_duration_s=5,
        started_at=T0,
        ended_at=T0,
        phases=[PhaseRecord(phase=ChaosPhase.FAILED, entered_at=T0)],
    )
    page = render_html(report)
    assert page.count("<svg") == 5
    for text in ("no health score recorded", "no calls counted", "no breaker opened"):
        assert text in page
    assert "No calls were counted." in page and "validation: target not allowed" in page
    assert ">fault injected</text>" not in page


def test_without_matplotlib_it_is_one_clear_error() -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from antifragile.chaos.html_report import ChartsUnavailableError, render_html\n"
        "from tests.unit.chaos_report_sample import sample_report\n"
        "try:\n    render_html(sample_report())\n"
        "except ChartsUnavailableError as exc:\n    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout
    assert "pip install 'antifragile[report]'" in out and "matplotlib" in out


@pytest.mark.parametrize("args", [("--help",), ("chaos", "report", "--help")])
def test_matplotlib_is_imported_only_to_render(args: tuple[str, ...]) -> None:
    out, modules = _modules_after(*args)
    assert not [m for m in modules if m.split(".")[0] == "matplotlib"]
    assert "antifragile.chaos.html_report" not in modules
    if "report" in args:
        assert "--html" in out


def test_names_in_the_charts_are_shown_as_written() -> None:
    """Ids are prefixed per chart inside tags only, never in a name drawn as text."""
    name = 'svc url(#a) href="#b" id="c"'
    report = sample_report()
    report.calls_seen[name] = 1
    report.breaker_openings[name] = 1
    page = render_html(report)
    charts = page[page.index('id="chart-calls"') : page.index("Not in this report")]
    assert charts.count('>svc url(#a) href="#b" id="c"</text>') == 2


def test_the_only_urls_in_the_page_are_the_svg_namespaces() -> None:
    """Nothing that looks like a link: matplotlib's RDF metadata (purl.org,
    creativecommons.org, matplotlib.org) is left out."""
    page = render_html(sample_report())
    urls = set(re.findall(r"https?://[^\"'\s<>]+", page))
    assert urls == {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
