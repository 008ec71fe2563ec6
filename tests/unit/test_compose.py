"""docker-compose.yml cannot drift from the code: checked without a Docker engine.

Every claim the compose file, deploy/prometheus.yml and deploy/grafana make is checked
against the code that will run: the variables against the Settings model, the commands
against the CLI and the demo service's own argument parser, the search attributes against
the constants, the scrape targets against the exposed metrics ports, Grafana's provisioning
against its mounts and the prometheus service, and the health checks by running them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

import antifragile.constants as constants
from antifragile.cli import app
from antifragile.demo import guarded_service as demo_service
from antifragile.inprocess.metrics import serve
from antifragile.policy import WorkerPolicy
from antifragile.settings import Settings
from antifragile.stack.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
OURS = ("antifragile-init", "worker", "demo-service")
"""Services that run this repository's image."""
LONG_RUNNING_OURS = ("worker", "demo-service")
PREFIX = str(Settings.model_config.get("env_prefix", ""))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    return data


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    pairs = dict(env) if isinstance(env, dict) else dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in pairs.items()}


_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ``${NAME:-default}`` with nothing set in the environment: the default."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def settings_fields() -> set[str]:
    """Every variable the Settings model reads, derived from the model."""
    return {f"{PREFIX}{name}".upper() for name in Settings.model_fields}


def exposed_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split("/")[0]) for p in service.get("expose", [])}


def scrape_targets(prometheus: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(job, host, port) of every scrape target, static or DNS-discovered."""
    targets = []
    for job in prometheus["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                targets.append((job["job_name"], host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type", "SRV") == "A", "compose DNS has A records, no SRV"
            for name in dns["names"]:
                targets.append((job["job_name"], name, int(dns["port"])))
    return targets


def test_stack_has_temporal_on_postgres_ui_redis_init_workers_demo_prometheus_and_grafana(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert {
        "postgresql",
        "temporal",
        "temporal-ui",
        "redis",
        "antifragile-init",
        "worker",
        "demo-service",
        "prometheus",
        "grafana",
    } <= set(services)
    assert services["temporal"]["environment"]["DB"].startswith("postgres")
    assert services["temporal"]["environment"]["POSTGRES_SEEDS"] == "postgresql"
    assert services["worker"]["deploy"]["replicas"] >= 2


def test_every_service_has_an_image_and_a_restart_policy_and_third_party_images_are_pinned(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        assert service.get("restart"), f"{name} has no restart policy"
        image = service.get("image", "")
        assert image, f"{name} has no image"
        if name in OURS:
            assert service.get("build") == ".", f"{name} must build this repository's image"
            continue
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned {image}"


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name == "antifragile-init":
            assert service["restart"] == "on-failure", "a one-shot must not restart forever"
            continue
        if name == "temporal-ui":
            continue  # the UI image ships no client to probe itself with
        assert "healthcheck" in service, f"{name} has no healthcheck"


def test_dependencies_wait_for_health_and_init(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["temporal"]["depends_on"]["postgresql"]["condition"] == "service_healthy"
    assert services["antifragile-init"]["depends_on"]["temporal"]["condition"] == (
        "service_healthy"
    )
    for name in LONG_RUNNING_OURS:
        depends = services[name]["depends_on"]
        assert depends["antifragile-init"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_antifragile_services_use_only_variables_the_settings_model_reads(
    compose: dict[str, Any],
) -> None:
    fields = settings_fields()
    assert "ANTIFRAGILE_TEMPORAL_ADDRESS" in fields  # the derivation itself works
    text = (ROOT / "docker-compose.yml").read_text()
    mentioned = set(re.findall(r"\bANTIFRAGILE_[A-Z0-9_]+", text))
    assert mentioned <= fields, f"compose mentions unknown variables {mentioned - fields}"
    for name in OURS:
        env = env_of(compose["services"][name])
        assert env["ANTIFRAGILE_TEMPORAL_ADDRESS"] == "temporal:7233"
        assert env["ANTIFRAGILE_REDIS_URL"].startswith("redis://redis:6379")


def test_each_antifragile_service_environment_is_valid_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in OURS:
        for key in list(os.environ):
            if key.startswith(PREFIX.upper()):
                monkeypatch.delenv(key)
        for key, value in env_of(compose["services"][name]).items():
            monkeypatch.setenv(key, interpolate(value))
        settings = Settings()
        assert settings.temporal_address == "temporal:7233", name
        assert settings.otel_endpoint is None, f"{name}: tracing must default to off"


def test_init_service_runs_the_setup_command(compose: dict[str, Any]) -> None:
    init = compose["services"]["antifragile-init"]
    assert init["command"] == ["setup"]
    assert "entrypoint" not in init  # the image's entrypoint: the antifragile CLI
    commands = {
        c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands
    }
    assert {"setup", "worker"} <= commands
    assert compose["services"]["worker"]["command"] == ["worker"]


class FakeOperatorService:
    def __init__(self, existing: list[str]) -> None:
        self.existing = existing
        self.added: dict[str, int] = {}

    async def list_search_attributes(self, request: Any) -> Any:
        return type("Resp", (), {"custom_attributes": dict.fromkeys(self.existing, 1)})()

    async def add_search_attributes(self, request: Any) -> None:
        self.added.update(dict(request.search_attributes))


class FakeClient:
    namespace = "default"

    def __init__(self, existing: list[str]) -> None:
        self.operator_service = FakeOperatorService(existing)


def test_setup_registers_exactly_the_search_attributes_the_workflows_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.common import SearchAttributeKey

    client = FakeClient(existing=["AfKind"])  # one already there: setup is idempotent

    async def fake_connect(*args: Any, **kwargs: Any) -> FakeClient:
        return client

    monkeypatch.setattr("antifragile.temporal_client.connect", fake_connect)
    result = CliRunner().invoke(app, ["setup"])
    assert result.exit_code == 0, result.output
    registered = {
        "AfKind": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
    } | client.operator_service.added
    keys = [v for v in vars(constants).values() if isinstance(v, SearchAttributeKey)]
    assert keys, "the workflows' search attribute keys live in antifragile.constants"
    used = {key.name: key.indexed_value_type.name for key in keys}
    assert set(registered) == set(used) == set(constants.SEARCH_ATTRIBUTES)
    for name, kind in used.items():
        assert IndexedValueType.Name(registered[name]) == f"INDEXED_VALUE_TYPE_{kind}", name
        assert constants.SEARCH_ATTRIBUTES[name].upper() == kind, name


def test_only_the_ui_temporal_redis_prometheus_and_grafana_publish_host_ports(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert "7233:7233" in services["temporal"]["ports"]
    assert "6379:6379" in services["redis"]["ports"]
    assert any(str(p).endswith(":8080") for p in services["temporal-ui"]["ports"])
    assert "9090:9090" in services["prometheus"]["ports"]
    assert "3000:3000" in services["grafana"]["ports"]
    for name in OURS:
        # Replicas would clash on a fixed host port: ours expose to the network only.
        assert "ports" not in services[name], f"{name} publishes host ports"


def test_metrics_ports_are_exposed_configured_and_scraped(
    compose: dict[str, Any], prometheus: dict[str, Any]
) -> None:
    services = compose["services"]
    targets = scrape_targets(prometheus)
    scraped = {(host, port) for _, host, port in targets}
    for _, host, port in targets:
        assert host in services, f"scrape target {host} is not a compose service"
        service = services[host]
        env = env_of(service)
        configured = {
            int(env[v])
            for v in ("ANTIFRAGILE_METRICS_PORT", "ANTIFRAGILE_TEMPORAL_METRICS_PORT")
            if v in env
        }
        assert port in configured, f"{host}:{port} is not a metrics port the process serves"
        assert port in exposed_ports(service), f"{host} does not expose {port}"
    for name in LONG_RUNNING_OURS:
        env = env_of(services[name])
        assert (name, int(env["ANTIFRAGILE_METRICS_PORT"])) in scraped, f"{name} not scraped"
    worker_env = env_of(services["worker"])
    assert (
        "worker",
        int(worker_env["ANTIFRAGILE_TEMPORAL_METRICS_PORT"]),
    ) in scraped, "Temporal SDK metrics not scraped"
    # Replicas must all be scraped: DNS discovery, not a static target behind round robin.
    worker_jobs = [job for job, host, _ in targets if host == "worker"]
    for job in prometheus["scrape_configs"]:
        if job["job_name"] in worker_jobs:
            assert "dns_sd_configs" in job, job["job_name"]


def test_every_bind_mount_is_a_file_or_a_non_empty_directory_in_the_repository(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("."):
                path = ROOT / source
                assert path.is_file() or any(path.glob("*")), f"{name} mounts missing {source}"


def test_the_mounted_worker_policy_is_the_policy_file_and_valid(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    target = env_of(worker)["ANTIFRAGILE_POLICY_FILE"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in worker["volumes"]}
    policy = WorkerPolicy.load(ROOT / mounts[target])
    assert policy.chaos.max_duration_s <= 300


def test_prometheus_mounts_the_scrape_config(compose: dict[str, Any]) -> None:
    volumes = [str(v) for v in compose["services"]["prometheus"]["volumes"]]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes


def test_demo_service_command_parses_with_the_demo_services_own_parser(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = compose["services"]["demo-service"]
    entrypoint = demo["entrypoint"]
    assert entrypoint[:2] == ["python", "-m"]
    module = entrypoint[2]
    assert importlib.util.find_spec(module) is not None, module
    assert module == demo_service.__name__
    parsed: list[argparse.Namespace] = []

    async def capture(args: argparse.Namespace) -> None:
        parsed.append(args)

    monkeypatch.setattr(demo_service, "serve", capture)
    demo_service.main([str(a) for a in demo["command"]])  # a bad flag exits 2 here
    (args,) = parsed
    assert [t for t in args.targets.split(",") if t] == ["demo-db", "demo-cache"]
    assert not args.no_bridge, "the demo service reports health to Temporal"


@pytest.mark.parametrize("service", LONG_RUNNING_OURS)
def test_the_metrics_healthcheck_passes_when_the_endpoint_answers_and_fails_otherwise(
    compose: dict[str, Any], service: str
) -> None:
    check = compose["services"][service]["healthcheck"]["test"]
    assert check[0] == "CMD" and check[1] == "python"
    argv = [sys.executable, *check[2:]]
    port = free_port()
    env = {**os.environ, "ANTIFRAGILE_METRICS_PORT": str(port)}
    down = subprocess.run(argv, env=env, capture_output=True, timeout=30)
    assert down.returncode != 0
    server = serve(CollectorRegistry(), port, host="127.0.0.1")
    try:
        up = subprocess.run(argv, env=env, capture_output=True, timeout=30)
    finally:
        server.close()
    assert up.returncode == 0, up.stderr.decode()


def test_the_image_installs_the_package_with_tracing_and_runs_the_cli() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    # The same lock as `make install`, exactly (--frozen), with the otel extra.
    assert "COPY pyproject.toml uv.lock " in dockerfile
    syncs = re.findall(r"(?m)^RUN uv sync (.*)$", dockerfile)
    assert syncs and all("--frozen" in s and "--extra otel" in s for s in syncs)
    assert "--extra dev" not in dockerfile and "--all-extras" not in dockerfile
    # `python` in the compose health checks and entrypoints is the virtualenv's.
    assert "PATH=/app/.venv/bin:$PATH" in dockerfile
    assert 'ENTRYPOINT ["antifragile"]' in dockerfile
    for package in ("antifragile", "workflows", "activities", "workers"):
        assert f"COPY {package} " in dockerfile
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'antifragile = "antifragile.cli:main"' in pyproject
    assert re.search(r"(?m)^otel = \[", pyproject), "the otel extra the image installs"


def grafana_mounts(compose: dict[str, Any]) -> dict[str, Path]:
    """Container path -> repository path of Grafana's bind mounts."""
    mounts = {}
    for volume in compose["services"]["grafana"]["volumes"]:
        source, target, *_ = str(volume).split(":")
        if source.startswith("."):
            mounts[target] = ROOT / source
    return mounts


def in_container(mounts: dict[str, Path], path: str) -> Path:
    """The repository file Grafana sees at ``path`` through its mounts."""
    for target, source in mounts.items():
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return source / path[len(target) :].lstrip("/")
    raise AssertionError(f"{path} is not under any Grafana mount {sorted(mounts)}")


def test_grafana_is_provisioned_from_deploy_grafana_and_waits_for_prometheus(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    mounts = grafana_mounts(compose)
    provisioning = in_container(mounts, "/etc/grafana/provisioning")
    assert provisioning == ROOT / "deploy" / "grafana" / "provisioning"
    datasources = sorted((provisioning / "datasources").glob("*.yml"))
    providers = sorted((provisioning / "dashboards").glob("*.yml"))
    assert datasources and providers
    dashboards = []
    for provider_file in providers:
        for provider in yaml.safe_load(provider_file.read_text())["providers"]:
            assert provider["type"] == "file"
            folder = in_container(mounts, provider["options"]["path"])
            dashboards += sorted(folder.glob("*.json"))
    assert ROOT / "deploy" / "grafana" / "dashboards" / "antifragile.json" in dashboards
    env = env_of(grafana)
    home = in_container(mounts, env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home in dashboards
    # Anonymous visitors view; editing needs the admin, whose password comes from the env.
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${")


def test_grafana_datasource_is_the_prometheus_service_on_its_port_with_the_dashboards_uid(
    compose: dict[str, Any], prometheus: dict[str, Any]
) -> None:
    services = compose["services"]
    provisioning = in_container(grafana_mounts(compose), "/etc/grafana/provisioning")
    (source,) = [
        ds
        for path in sorted((provisioning / "datasources").glob("*.yml"))
        for ds in yaml.safe_load(path.read_text())["datasources"]
    ]
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    url = urlsplit(source["url"])
    assert url.hostname in services and url.hostname == "prometheus"
    command = " ".join(services["prometheus"]["command"])
    listen = re.search(r"--web\.listen-address=\S*:(\d+)", command)
    container_port = int(listen.group(1)) if listen else 9090  # Prometheus's default
    published = {int(str(p).rsplit(":", 1)[1]) for p in services["prometheus"]["ports"]}
    assert url.port == container_port and container_port in published
    assert source["jsonData"]["timeInterval"] == prometheus["global"]["scrape_interval"]
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/antifragile.json").read_text())
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"] if panel["type"] != "row"}
    assert uids == {source["uid"]}


def test_grafana_healthcheck_probes_its_own_port(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    check = grafana["healthcheck"]["test"]
    assert check[:2] == ["CMD", "wget"] and "-O" in check  # busybox wget; no file left in cwd
    (port,) = {int(str(p).rsplit(":", 1)[1]) for p in grafana["ports"]}
    assert check[-1] == f"http://127.0.0.1:{port}/api/health"
