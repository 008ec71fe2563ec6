"""docker-compose.yml cannot drift from the code: checked without a Docker engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from antifragile.policy import WorkerPolicy
from antifragile.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    return dict(env) if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def test_stack_has_temporal_on_postgres_ui_redis_init_and_workers(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert {"postgresql", "temporal", "temporal-ui", "redis", "antifragile-init", "worker"} <= set(
        services
    )
    assert services["temporal"]["environment"]["DB"].startswith("postgres")
    assert services["temporal"]["environment"]["POSTGRES_SEEDS"] == "postgresql"
    assert services["worker"]["deploy"]["replicas"] >= 2


def test_every_long_running_service_has_a_restart_policy_and_pinned_image(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        assert service.get("restart"), f"{name} has no restart policy"
        image = service.get("image", "")
        if name in ("worker", "antifragile-init"):
            continue  # built from this repo's Dockerfile
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned {image}"


def test_dependencies_wait_for_health_and_init(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgresql", "temporal", "redis"):
        assert "healthcheck" in services[name], name
    assert services["temporal"]["depends_on"]["postgresql"]["condition"] == "service_healthy"
    assert (
        services["worker"]["depends_on"]["antifragile-init"]["condition"]
        == "service_completed_successfully"
    )


def test_antifragile_services_use_only_settings_the_code_reads(compose: dict[str, Any]) -> None:
    fields = {f"ANTIFRAGILE_{name.upper()}" for name in Settings.model_fields}
    for name in ("antifragile-init", "worker"):
        env = env_of(compose["services"][name])
        used = {k for k in env if k.startswith("ANTIFRAGILE_")}
        assert used <= fields, f"{name} sets unknown variables {used - fields}"
        assert env["ANTIFRAGILE_TEMPORAL_ADDRESS"] == "temporal:7233"
        assert env["ANTIFRAGILE_REDIS_URL"].startswith("redis://redis:6379")


def test_init_service_registers_search_attributes(compose: dict[str, Any]) -> None:
    assert compose["services"]["antifragile-init"]["command"] == ["setup"]


def test_ports_match_the_documented_defaults(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "7233:7233" in services["temporal"]["ports"]
    assert "6379:6379" in services["redis"]["ports"]
    assert any(p.endswith(":8080") for p in services["temporal-ui"]["ports"])


def test_the_mounted_worker_policy_is_valid() -> None:
    policy = WorkerPolicy.load(ROOT / "deploy" / "policy.yaml")
    assert policy.chaos.max_duration_s <= 300


def test_the_image_installs_the_package_and_runs_the_cli() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install ." in dockerfile
    assert 'ENTRYPOINT ["antifragile"]' in dockerfile
    for package in ("antifragile", "workflows", "activities", "workers"):
        assert f"COPY {package} " in dockerfile
