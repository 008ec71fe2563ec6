"""The HTML chaos report in a real browser: headless Chromium draws every chart.

Skipped only when Chromium is absent and ``ANTIFRAGILE_REQUIRE_CHROMIUM`` is unset; CI
(``.ci/run``) installs Chromium and sets it, so there the test must run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from antifragile.chaos.html_report import render_html
from tests.unit.chaos_report_sample import sample_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("ANTIFRAGILE_REQUIRE_CHROMIUM"),
    reason="chromium not installed (set ANTIFRAGILE_REQUIRE_CHROMIUM to fail instead)",
)

_MEASURE = """<script>
const size = (el) => { const r = el.getBoundingClientRect(); return [r.width, r.height]; };
const out = {};
for (const svg of document.querySelectorAll("figure > svg")) {
  const series = '[id*="-health-"] > path, [id*="-calls-"] > path, [id*="-breakers-"] > path,'
    + ' [id*="-outcomes-"] > path, [id*="-latency-"] > path';
  const lines = [...svg.querySelectorAll(series)];
  out[svg.id] = {svg: size(svg), marks: lines.map((p) => size(p))};
}
const pre = document.createElement("pre");
pre.id = "measured";
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None, "ANTIFRAGILE_REQUIRE_CHROMIUM is set but chromium is absent"
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing but the file itself
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1100,2400",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_chart_is_drawn_with_a_size(tmp_path: Path) -> None:
    """The page's DOM after layout: each SVG and each of its series has a real size.

    The measuring script is added to a copy whose policy lets an inline script run (the
    report's own policy forbids every script).
    """
    page = render_html(sample_report())
    assert "script-src" not in page
    measured = page.replace(
        "default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';"
    )
    measured = measured.replace("</body>", _MEASURE + "</body>")
    file = tmp_path / "measured.html"
    file.write_text(measured, encoding="utf-8")
    proc = _chromium(tmp_path, "--dump-dom", file.as_uri())
    found = re.search(r'<pre id="measured">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stderr[-2000:]
    sizes = json.loads(found.group(1).replace("&quot;", '"'))
    assert set(sizes) == {
        "chart-health",
        "chart-calls",
        "chart-breakers",
        "chart-outcomes",
        "chart-latency",
    }
    for name, got in sizes.items():
        width, height = got["svg"]
        assert width > 400 and height > 80, (name, got)
        assert got["marks"] and all(w > 0 or h > 0 for w, h in got["marks"]), (name, got)
    # The health lines span most of the experiment: the lines are drawn, not just placed.
    assert max(w for w, _ in sizes["chart-health"]["marks"]) > width / 2
    # Call outcomes and latency over time are lines across the experiment as well.
    for name in ("chart-outcomes", "chart-latency"):
        assert max(w for w, _ in sizes[name]["marks"]) > sizes[name]["svg"][0] / 2, name


def test_the_report_as_written_paints_its_charts(tmp_path: Path) -> None:
    """The unmodified file under its own strict policy: a screenshot shows the charts' colours."""
    from matplotlib.image import imread

    file = tmp_path / "report.html"
    file.write_text(render_html(sample_report()), encoding="utf-8")
    shot = tmp_path / "shot.png"
    proc = _chromium(tmp_path, f"--screenshot={shot}", file.as_uri())
    assert shot.exists(), proc.stderr[-2000:]
    pixels = imread(str(shot))[:, :, :3]
    rgb = (pixels * 255).round().astype(int).reshape(-1, 3)
    colours = {tuple(c) for c in rgb[::7]}

    def near(colour: str) -> bool:
        want = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
        return any(all(abs(a - b) <= 6 for a, b in zip(c, want, strict=True)) for c in colours)

    # The RUNNING phase's shade, the calls "affected" bars, the breaker bars.
    for colour in ("#f3d1d1", "#e67e22", "#c0392b"):
        assert near(colour), colour
    assert len(colours) > 50, "a blank or text-only page"
