"""The Grafana dashboard in deploy/grafana: its model, its datasource, and its queries.

The queries are parsed here (metric names, label matchers, grouping labels) and checked
against what the processes serve: the in-process runtime's metrics are scraped over HTTP
below; the worker's and the Temporal SDK's in
tests/integration/test_grafana_dashboard_metrics.py, which uses the same helpers.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.faults import build_fault
from antifragile.inprocess.runtime import Runtime
from antifragile.models.chaos import FaultSpec
from antifragile.models.chaos_scenario import ChaosType
from antifragile.settings import Settings
from antifragile.stack.processes import free_port
from antifragile.testing import eventually

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "antifragile.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"

# --- PromQL, as far as the dashboard uses it -------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {"bool", "offset", "and", "or", "unless", "inf", "nan", "by", "without", "on"}
_KEYWORDS |= {"ignoring", "group_left", "group_right"}
_LABEL_VALUES = re.compile(r"\s*label_values\((?:(.*),)?\s*([a-zA-Z_]\w*)\s*\)\s*")


@dataclass
class Query:
    """What one PromQL expression asks of the served series."""

    where: str
    metrics: set[str] = field(default_factory=set)
    matchers: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(metric, label, operator, value) of every label matcher."""
    grouping: set[str] = field(default_factory=set)
    """Labels in by/without/on/ignoring/group_* clauses."""


def parse_promql(expr: str, where: str = "") -> Query:
    """Metric names, label matchers and grouping labels of ``expr``.

    Function and aggregation names are followed by ``(``; range selectors, strings and
    Grafana variables are removed before names are read.
    """
    query = Query(where or expr)
    for labels in _GROUPING.findall(expr):
        query.grouping |= {label.strip() for label in labels.split(",") if label.strip()}
    rest = _GROUPING.sub(" ", expr)
    for name, body in _SELECTOR.findall(rest):
        for label, op, value in _MATCHER.findall(body):
            query.matchers.append((name, label, op, value))
    rest = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", rest)
    rest = _STRING.sub(" ", _RANGE.sub(" ", rest))
    query.metrics = {name for name in _IDENT.findall(rest) if name.lower() not in _KEYWORDS} | {
        name for name, *_ in query.matchers if name
    }
    return query


def dashboard_queries(dashboard: dict[str, Any]) -> list[Query]:
    """Every query of the dashboard: panel targets and query variables."""
    queries = []
    for panel in panels_of(dashboard):
        for target in panel.get("targets", []):
            where = f"panel {panel['title']!r} target {target.get('refId')}"
            queries.append(parse_promql(target["expr"], where))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        text = variable["query"]["query"] if isinstance(variable["query"], dict) else ""
        text = text or str(variable["query"])
        match = _LABEL_VALUES.fullmatch(text)
        assert match, f"variable {variable['name']}: not label_values(metric, label): {text}"
        query = parse_promql(match.group(1) or "", f"variable {variable['name']}")
        query.grouping.add(match.group(2))  # the label must exist on the metric
        queries.append(query)
    return queries


def panels_of(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that is not a row (rows' nested panels included)."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


# --- What the processes serve ------------------------------------------------------------

Served = dict[str, dict[str, set[str]]]
"""Series name -> label name -> values seen."""


_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+\S+(?:\s+\S+)?")
_LABEL = re.compile(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"')


def served_series(*texts: str) -> Served:
    """Series names and labels exactly as exposed, which is how Prometheus stores them.

    Not ``prometheus_client.parser``: it names a counter's samples ``<name>_total`` even
    when the exporter (the Temporal SDK's) exposes ``temporal_workflow_completed`` without
    the suffix, and Prometheus would store no ``_total`` series.
    """
    served: Served = {}
    for text in texts:
        for line in text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            match = _SAMPLE.fullmatch(line.strip())
            assert match, f"not a sample line: {line}"
            labels = served.setdefault(match.group(1), {})
            for label, value in _LABEL.findall(match.group(2) or ""):
                labels.setdefault(label, set()).add(value)
    return served


def problems(queries: Iterable[Query], served: Served) -> list[str]:
    """Every metric, label or label value a query names that nothing serves."""
    found = []
    for query in queries:
        for metric in sorted(query.metrics):
            if metric not in served:
                found.append(f"{query.where}: {metric} is not served")
        known = [served[m] for m in query.metrics if m in served]
        for metric, label, op, value in query.matchers:
            labels = served.get(metric, {})
            if metric in served and label not in labels:
                found.append(f"{query.where}: {metric} has no label {label}")
            elif op == "=" and "$" not in value and value not in labels.get(label, set()):
                found.append(f"{query.where}: no {metric}{{{label}={value!r}}} is served")
        for label in sorted(query.grouping):
            if known and not any(label in labels for labels in known):
                found.append(f"{query.where}: no queried metric has label {label}")
    return found


def scrape(port: int) -> str:
    """The text of ``http://127.0.0.1:port/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


RUNTIME_PREFIXES = ("antifragile_breaker_", "antifragile_health_", "antifragile_faults_")
RUNTIME_PREFIXES += ("antifragile_metering_",)


def runtime_queries(queries: Iterable[Query]) -> list[Query]:
    """The queries of the in-process runtime's metrics (none of the worker's)."""
    return [q for q in queries if all(m.startswith(RUNTIME_PREFIXES) for m in q.metrics)]


# --- Tests -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    (only,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    data: dict[str, Any] = only
    return data


def test_the_dashboard_is_a_current_grafana_model_with_unique_ids(
    dashboard: dict[str, Any],
) -> None:
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"]
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    ids = [p["id"] for p in dashboard["panels"]] + [p["id"] for r in rows for p in r["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    cells = {
        (p["gridPos"]["y"] + dy, p["gridPos"]["x"] + dx)
        for p in dashboard["panels"]
        for dy in range(p["gridPos"]["h"])
        for dx in range(p["gridPos"]["w"])
    }
    area = sum(p["gridPos"]["h"] * p["gridPos"]["w"] for p in dashboard["panels"])
    assert len(cells) == area, "panels overlap"


def test_every_panel_queries_the_provisioned_prometheus_datasource(
    dashboard: dict[str, Any], datasource: dict[str, Any]
) -> None:
    assert datasource["type"] == "prometheus"
    expected = {"type": "prometheus", "uid": datasource["uid"]}
    panels = list(panels_of(dashboard))
    assert len(panels) >= 10
    for panel in panels:
        assert panel.get("datasource") == expected, panel["title"]
        targets = panel.get("targets", [])
        assert targets, f"{panel['title']} has no targets"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in targets:
            assert target.get("datasource") == expected, panel["title"]
            assert target.get("expr", "").strip(), panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"] == expected, variable["name"]


def test_the_parser_reads_names_matchers_and_grouping_but_no_function_or_variable() -> None:
    query = parse_promql(
        "histogram_quantile(0.95, sum by (le, task_queue) "
        '(rate(temporal_x_latency_bucket{task_queue=~"$tq"}[$__rate_interval])))'
        ' + 2 * max by (instance) (antifragile_health_status{status="DEGRADED"}) offset 5m'
        " / on (instance) group_left bare_metric_total > bool 1e3"
    )
    assert query.metrics == {
        "temporal_x_latency_bucket",
        "antifragile_health_status",
        "bare_metric_total",
    }
    assert query.grouping == {"le", "task_queue", "instance"}
    assert ("antifragile_health_status", "status", "=", "DEGRADED") in query.matchers
    assert ("temporal_x_latency_bucket", "task_queue", "=~", "$tq") in query.matchers


def test_the_comparison_reports_an_unserved_metric_label_value_and_grouping() -> None:
    served = served_series(
        "# TYPE antifragile_health_status gauge\n"
        'antifragile_health_status{instance="a",status="HEALTHY"} 1\n'
    )
    good = parse_promql('max by (instance) (antifragile_health_status{status="HEALTHY"})')
    assert problems([good], served) == []
    for bad in (
        "antifragile_health_statuses",
        'antifragile_health_status{state="HEALTHY"}',
        'antifragile_health_status{status="FINE"}',
        "max by (dependency) (antifragile_health_status)",
    ):
        assert problems([parse_promql(bad)], served), bad


def test_served_series_are_named_as_exposed_without_an_added_total() -> None:
    served = served_series(
        "# HELP temporal_workflow_completed Count of successfully completed workflows\n"
        "# TYPE temporal_workflow_completed counter\n"
        'temporal_workflow_completed{task_queue="q",workflow_type="W"} 1\n'
        'antifragile_metering_recorded_total{instance="a"} 5.0 1700000000000\n'
        "bare 2\n"
    )
    assert served == {
        "temporal_workflow_completed": {"task_queue": {"q"}, "workflow_type": {"W"}},
        "antifragile_metering_recorded_total": {"instance": {"a"}},
        "bare": {},
    }


def test_the_dashboard_has_the_panels_operators_need(dashboard: dict[str, Any]) -> None:
    # Coverage of the panels asked for; that each name is served is proven by scraping.
    queried = set().union(*(q.metrics for q in dashboard_queries(dashboard)))
    for metric in (
        "antifragile_breaker_state",
        "antifragile_health_score",
        "antifragile_health_status",
        "antifragile_faults_active",
        "antifragile_metering_recorded_total",
        "antifragile_metering_written_total",
        "antifragile_metering_dropped_total",
        "antifragile_workflows",
        "temporal_workflow_task_schedule_to_start_latency_bucket",
        "temporal_activity_execution_latency_bucket",
    ):
        assert metric in queried, metric
    kinds = {
        value
        for q in dashboard_queries(dashboard)
        for metric, label, _, value in q.matchers
        if (metric, label) == ("antifragile_workflows", "kind")
    }
    assert kinds == {"recovery", "chaos"}


def test_counters_are_rated_and_histograms_read_through_quantiles(
    dashboard: dict[str, Any],
) -> None:
    for panel in panels_of(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            for metric in parse_promql(expr).metrics:
                if metric.endswith(("_total", "_completed")):
                    assert re.search(rf"rate\({metric}\b", expr), expr
                if metric.endswith("_bucket"):
                    assert "histogram_quantile(" in expr and "le" in parse_promql(expr).grouping
                    assert panel["fieldConfig"]["defaults"]["unit"] == "ms", panel["title"]


async def test_every_runtime_metric_the_dashboard_queries_is_served_by_a_real_runtime(
    dashboard: dict[str, Any], redis_url: str
) -> None:
    # A runtime as a guarded service embeds it: two breakers (one tripped), health,
    # metering to a real Redis, one fault applied; its /metrics scraped over HTTP.
    port = free_port()
    runtime = Runtime(
        Settings(metrics_port=port, redis_url=redis_url), instance_id="dash", bridge=False
    )
    db = runtime.guard("demo-db", breaker_config=CircuitBreakerConfig(failure_threshold=1))
    cache = runtime.guard("demo-cache")
    await runtime.start()
    try:

        async def boom() -> None:
            raise RuntimeError("down")

        async def ok() -> None:
            return None

        with contextlib.suppress(RuntimeError):
            await db.call(boom)
        for _ in range(3):
            await cache.call(ok)
        spec = FaultSpec.model_validate(
            {
                "experiment_id": "chaos-dash-1",
                "chaos_type": ChaosType.LATENCY,
                "target": "demo-cache",
                "blast_radius": ["demo-cache"],
            }
        )
        runtime.faults.install("demo-cache", build_fault(spec))
        assert runtime.metering is not None
        metering = runtime.metering
        await eventually(lambda: metering.stats().written >= 3, timeout=10)
        text = scrape(port)
    finally:
        await runtime.stop()
    served = served_series(text)
    assert served["antifragile_faults_active"]["instance"] == {"dash"}
    assert served["antifragile_breaker_state"]["dependency"] == {"demo-db", "demo-cache"}
    queries = runtime_queries(dashboard_queries(dashboard))
    assert len(queries) >= 8, [q.where for q in queries]
    assert problems(queries, served) == []
