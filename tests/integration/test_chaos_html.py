"""``chaos report ID --html FILE`` end to end: a real experiment on real servers (dev server,
Redis, a worker and a guarded demo service, each its own process), then its HTML page."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from antifragile.models.chaos import ChaosOutcome, ChaosReport
from antifragile.stack.processes import ServerProcess
from tests.integration.chaos_support import Stack, chaos_stack, cli, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# A target of its own: a ledger (profile-{target}) runs on the task queue of the first
# fleet that recorded to it, and other modules on this dev server also experiment on
# "demo-db" with workers that are gone by now (their ledger would never answer here).
DB = f"html-db-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def stack(
    dev_server: ServerProcess, redis_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with chaos_stack(
        dev_server.port,
        redis_server.port,
        tmp_path_factory.mktemp("chaos-html"),
        [DB],
        lease_ttl_s=2.0,
        instance="html-1",
    ) as started:
        yield started


async def test_a_real_experiment_s_report_is_one_offline_html_page(
    stack: Stack, tmp_path: Path
) -> None:
    await eventually(
        lambda: stack.demo.status()["plane_connected"], timeout=20, what="demo service up"
    )
    code, out, err = await cli(
        stack.env,
        "chaos", "start", "--type", "error", "--error-rate", "1", "--target", DB,
        "--name", "html-report", "--duration", "6s", "--abort-below", "0", "--wait", "--json",
    )  # fmt: skip
    # 6 s: health checks 1.5 s apart while it runs, so at least three call samples even
    # when Temporal fires the checks' timers late (a 2 s run gave two, once, under load).
    assert code == 0, err
    report = ChaosReport.model_validate_json(out)
    assert report.outcome is ChaosOutcome.COMPLETED
    assert report.health_timeline and report.calls_affected, report
    # The target's calls at each health check, from the runtime's cumulative counters.
    samples = report.call_samples
    assert len(samples) >= 3, samples
    assert samples[-1].failed > 0 and samples[-1].ok > 0, samples
    assert all(a.ok <= b.ok and a.failed <= b.failed for a, b in pairwise(samples))
    assert sum(s.p50_ms is not None for s in samples) >= 2, samples

    page = tmp_path / "report.html"
    code, out, err = await cli(
        stack.env, "chaos", "report", report.experiment_id, "--html", str(page), "--json"
    )
    assert code == 0, err
    reported = ChaosReport.model_validate_json(out)
    assert reported.experiment_id == report.experiment_id
    # The measurements the experiment recorded in its target's ledger, and the advice.
    learning = reported.learning
    assert learning is not None and learning.dependency == DB, reported
    assert learning.observation is not None, learning.note
    assert learning.observation.source_id == report.experiment_id
    assert learning.observation.fault_start == report.injected_at
    assert learning.advice, learning
    assert f"HTML report written to {page}" in err.replace("\n", "")
    text = page.read_text(encoding="utf-8")
    assert text.count("<svg") == 5 and "default-src 'none'" in text
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text)
    assert "<title>Chaos report: html-report</title>" in text
    assert f"What it taught (ledger of {DB})" in text and "time to detect" in text
    # The numbers the CLI printed are the page's: calls counted at the real call site.
    for instance, n in report.calls_affected.items():
        assert re.search(rf"<td>{instance}</td><td[^>]*>[\d,]+</td><td[^>]*>{n:,}</td>", text)
    assert 'id="chart-health-health-0"' in text  # the health samples were drawn
    # Call outcomes per second and latency over time, drawn from those samples: a line
    # with a point per interval (matplotlib writes "L x y" per point after the first).
    for gid in (
        "chart-outcomes-outcomes-succeeded",
        "chart-outcomes-outcomes-failed",
        "chart-latency-latency-p50",
        "chart-latency-latency-p99",
    ):
        found = re.search(rf'<g id="{gid}">\s*<path d="([^"]*)"', text)
        assert found and found.group(1).count("L") >= 1, (gid, samples)
    for phase in ("RUNNING", "VERIFYING_RECOVERY"):
        assert re.search(rf'id="chart-health-phase-\d+-{phase}"', text)

    # Without --json the table is printed as before, and the page is written as well.
    again = tmp_path / "again.html"
    code, out, err = await cli(
        stack.env, "chaos", "report", report.experiment_id, "--html", str(again)
    )
    assert code == 0 and "lowest health" in out and again.stat().st_size > 10_000, err
    assert f"learned (ledger of {DB})" in out and "calls failed / refused" in out

    # A page that cannot be written is one line, exit 2.
    code, out, err = await cli(
        stack.env,
        "chaos",
        "report",
        report.experiment_id,
        "--html",
        str(tmp_path / "no" / "x.html"),
    )
    assert code == 2, (out, err)
    assert (
        err.strip().startswith("error: --html: cannot write") and len(err.strip().splitlines()) == 1
    )
