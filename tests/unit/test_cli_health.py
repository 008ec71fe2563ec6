"""``antifragile health``: tables and JSON from af:health:* snapshots; Redis down exits 2."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import redis
import redis.asyncio as aioredis
import typer
from typer.testing import CliRunner

from antifragile.cli.health import health_command
from antifragile.fleet_health import HEALTH_MEMBERS_KEY, publish_snapshot, withdraw_snapshot
from antifragile.inprocess.breaker import CircuitBreaker
from antifragile.inprocess.bridge import Bridge, health_key
from antifragile.inprocess.health import HealthAggregator, HealthAggregatorConfig
from antifragile.settings import Settings
from antifragile.stack.processes import free_port
from antifragile.testing import eventually_sync
from tests.unit.conftest import RestartableRedis

app = typer.Typer()
app.command("health")(health_command)
app.command("noop")(lambda: None)  # two commands: typer keeps "health" as a subcommand


def publish(url: str, instance: str, open_breaker: bool) -> None:
    agg = HealthAggregator(HealthAggregatorConfig(stabilization_window_s=0))
    ok, bad = CircuitBreaker("db"), CircuitBreaker("cache")
    agg.register_circuit_breaker("db", ok)
    agg.register_circuit_breaker("cache", bad)
    if open_breaker:
        bad.force_open()
    doc = agg.get_system_health().model_dump(mode="json")
    doc.update(instance=instance, published_at=0)
    redis.Redis.from_url(url).set(health_key(instance), json.dumps(doc), ex=15)


def test_json_lists_every_instance_and_the_worst_status(
    own_redis: RestartableRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTIFRAGILE_REDIS_URL", own_redis.url)
    publish(own_redis.url, "a-1", False)
    publish(own_redis.url, "b-2", True)
    result = CliRunner().invoke(app, ["health", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [i["instance"] for i in doc["instances"]] == ["a-1", "b-2"]
    assert doc["instances"][1]["circuit_details"]["cache"]["state"] == "FORCED_OPEN"
    assert doc["fleet"] == {"instances": 2, "status": "DEGRADED"}


def test_table_shows_instances_and_breakers(
    own_redis: RestartableRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTIFRAGILE_REDIS_URL", own_redis.url)
    monkeypatch.setenv("COLUMNS", "200")
    publish(own_redis.url, "a-1", True)
    result = CliRunner().invoke(app, ["health"])
    assert result.exit_code == 0, result.output
    for text in ("a-1", "DEGRADED", "0.50", "cache", "FORCED_OPEN", "db", "CLOSED"):
        assert text in result.stdout


def test_unreachable_redis_is_one_line_naming_the_url_and_exit_2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("ANTIFRAGILE_REDIS_URL", url)
    result = CliRunner().invoke(app, ["health"])
    assert result.exit_code == 2
    assert url in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_member_whose_snapshot_expired_is_listed_unknown(
    own_redis: RestartableRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTIFRAGILE_REDIS_URL", own_redis.url)
    monkeypatch.setenv("COLUMNS", "200")

    async def scenario() -> None:
        client = aioredis.Redis.from_url(own_redis.url)
        try:
            await publish_snapshot(client, "live-1", json.dumps({"status": "HEALTHY"}), 30)
            await publish_snapshot(client, "dead-2", json.dumps({"status": "HEALTHY"}), 0.05)
            await publish_snapshot(client, "stopped-3", json.dumps({"status": "HEALTHY"}), 30)
            await withdraw_snapshot(client, "stopped-3")  # a clean stop: gone, not UNKNOWN
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the TTL runs out on Redis's clock
                if not await client.exists(health_key("dead-2")):
                    break
                await asyncio.sleep(0.01)
        finally:
            await client.aclose()

    asyncio.run(scenario())
    result = CliRunner().invoke(app, ["health", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    by_instance = {i["instance"]: i for i in doc["instances"]}
    assert set(by_instance) == {"live-1", "dead-2"}
    assert by_instance["dead-2"]["status"] == "UNKNOWN"
    assert by_instance["dead-2"]["reason"] == "health snapshot expired"
    assert doc["fleet"] == {"instances": 2, "status": "UNKNOWN"}
    table = CliRunner().invoke(app, ["health"])
    assert "UNKNOWN (health snapshot expired)" in table.stdout
    forgotten = CliRunner().invoke(app, ["health", "--json", "--forget-after", "0"])
    assert [i["instance"] for i in json.loads(forgotten.stdout)["instances"]] == ["live-1"]


async def test_a_runtime_publishes_membership_and_a_clean_stop_withdraws_it(
    own_redis: RestartableRedis,
) -> None:
    agg = HealthAggregator()
    client = aioredis.Redis.from_url(own_redis.url)
    bridge = Bridge(Settings(), "svc-9", agg, lambda name: None, redis_client=client)
    try:
        await bridge.publish_once()
        assert await client.zscore(HEALTH_MEMBERS_KEY, "svc-9") is not None
        assert await client.exists(health_key("svc-9"))
        await bridge.stop()
        assert await client.zscore(HEALTH_MEMBERS_KEY, "svc-9") is None
        assert not await client.exists(health_key("svc-9"))
    finally:
        await client.aclose()


# ------------------------------------------------------------------ review: first incident


def run_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``antifragile`` entry point (its error handling included)."""
    env = {**os.environ, "ANTIFRAGILE_REDIS_URL": url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "antifragile", "health", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("json_out", [False, True])
def test_redis_down_is_one_error_line_exit_2_and_json_stays_json(json_out: bool) -> None:
    # An SRE's first incident: Redis is down. The line said "cannot reach ..." without the
    # "error:" every other command prints, and --json printed nothing on stdout at all.
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = run_cli(url, *(["--json"] if json_out else []))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach Redis at " + url)
    assert "Traceback" not in result.stderr + result.stdout
    if json_out:
        doc = json.loads(result.stdout)
        assert doc["error"].startswith("cannot reach Redis")
        assert doc["fleet"] == {"instances": 0, "status": "UNKNOWN"}
        assert doc["instances"] == []
    else:
        assert result.stdout == ""


def test_a_malformed_redis_url_is_one_line_not_a_traceback() -> None:
    result = run_cli("redis://127.0.0.1:notaport/0")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_foreign_keys_under_the_health_prefix_never_crash_the_listing(
    own_redis: RestartableRedis,
) -> None:
    client = redis.Redis.from_url(own_redis.url)
    try:
        client.set(health_key("list-doc"), "[1, 2]")  # JSON, but not a snapshot
        client.set(health_key("garbage"), "not json")
        client.set(health_key("ok-1"), json.dumps({"status": "HEALTHY", "health_score": 1.0}))
        result = run_cli(own_redis.url, "--json")
        assert result.returncode == 0, result.stderr
        by_instance = {i["instance"]: i for i in json.loads(result.stdout)["instances"]}
        assert by_instance["list-doc"]["status"] == "UNKNOWN"
        assert by_instance["garbage"]["error"] == "unreadable snapshot"
        assert by_instance["ok-1"]["status"] == "HEALTHY"
        client.set(HEALTH_MEMBERS_KEY, "not a sorted set")  # WRONGTYPE from Redis
        result = run_cli(own_redis.url)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "WRONGTYPE" in lines[0] and lines[0].startswith("error: ")
    finally:
        client.close()


@pytest.mark.parametrize(
    "args",
    [
        ["--forget-after", "nan"],
        ["--forget-after", "-1"],
        ["--forget-after", "soon"],
        ["--watch", "--interval", "inf"],
        ["--watch", "--interval", "1e400"],
        ["--watch", "--interval", "0"],
    ],
)
def test_bad_flag_values_are_one_line_exit_2(args: list[str]) -> None:
    # --interval inf was accepted and crashed in time.sleep with an OverflowError.
    result = run_cli(f"redis://127.0.0.1:{free_port()}/0", *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert args[-2] in lines[0]


def test_forget_after_inf_keeps_every_member(own_redis: RestartableRedis) -> None:
    client = redis.Redis.from_url(own_redis.url)
    try:
        client.zadd(HEALTH_MEMBERS_KEY, {"ancient-1": 1.0})  # published in 1970
        result = run_cli(own_redis.url, "--json", "--forget-after", "inf")
        assert result.returncode == 0, result.stderr
        assert [i["instance"] for i in json.loads(result.stdout)["instances"]] == ["ancient-1"]
    finally:
        client.close()


def test_watch_json_is_json_lines_only_and_outlives_a_redis_blip(
    own_redis: RestartableRedis,
) -> None:
    # --watch --json printed a rich table among its JSON lines (and its first document
    # only after one interval), and a Redis blip ended the watch with exit 2 - the
    # moment an SRE needs it most.
    redis.Redis.from_url(own_redis.url).set(
        health_key("w-1"), json.dumps({"status": "HEALTHY", "health_score": 1.0}), ex=600
    )
    env = {**os.environ, "ANTIFRAGILE_REDIS_URL": own_redis.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "antifragile", "health", "--watch", "--json", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    seen: list[dict[str, object]] = []

    def next_doc() -> dict[str, object]:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line, proc.stderr.read() if proc.stderr else ""
        doc: dict[str, object] = json.loads(line)  # every line is one JSON document
        seen.append(doc)
        return doc

    try:
        assert next_doc()["fleet"] == {"instances": 1, "status": "HEALTHY"}
        own_redis.stop()
        deadline = time.monotonic() + 30
        while "error" not in next_doc():
            assert time.monotonic() < deadline
        own_redis.start()  # empty again: no instances, but no error
        while "error" in next_doc():
            assert time.monotonic() < deadline
        assert proc.poll() is None  # still watching
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    for line in out.splitlines():
        json.loads(line)
    assert "Traceback" not in err
    assert any(line.startswith("error: cannot reach Redis") for line in err.splitlines())


def test_odd_snapshot_fields_and_markup_in_names_never_crash_the_table(
    own_redis: RestartableRedis,
) -> None:
    # A breaker or instance named "svc[/x]" was read as rich markup (MarkupError), and a
    # snapshot with "published_at": "x" or a list of circuit details raised in render().
    client = redis.Redis.from_url(own_redis.url)
    try:
        client.set(
            health_key("svc[/x]"),
            json.dumps(
                {
                    "status": "DEGRADED",
                    "health_score": 0.5,
                    "total_breakers": 2,
                    "open_breakers": 1,
                    "circuit_details": {
                        "db[primary]": {"state": "CLOSED", "weight": 1},
                        "q[/bold]": {"state": "OPEN", "failure_rate": 1.0},
                    },
                }
            ),
        )
        client.set(
            health_key("odd"),
            json.dumps(
                {
                    "status": "HEALTHY",
                    "health_score": "abc",
                    "published_at": "x",
                    "total_breakers": "?",
                    "open_breakers": None,
                    "circuit_details": {"a": "OPEN", "b": {"failure_rate": "x"}},
                }
            ),
        )
        client.set(health_key("listy"), json.dumps({"status": "HEALTHY", "circuit_details": [1]}))
        result = run_cli(own_redis.url)
        assert result.returncode == 0, result.stderr
        client.set(health_key("garbled"), "not json")
        result = run_cli(own_redis.url)
        for text in ("svc[/x]", "db[primary]", "q[/bold]", "odd", "listy", "0.50"):
            assert text in result.stdout
        assert "UNKNOWN (unreadable snapshot)" in result.stdout
        for text in ("svc[/x]", "db[primary]", "q[/bold]", "odd", "listy", "0.50"):
            assert text in result.stdout
        assert "Traceback" not in result.stderr
    finally:
        client.close()


def test_the_redis_password_never_reaches_the_output(own_redis: RestartableRedis) -> None:
    # The URL was printed as given: `health --json` put the password in every document,
    # and "cannot reach Redis at redis://:secret@..." put it in stderr (and CI logs).
    secret = "s3cret-pw"
    down = f"redis://:{secret}@127.0.0.1:{free_port()}/0"
    for args in ([], ["--json"]):
        result = run_cli(down, *args)
        assert result.returncode == 2
        assert secret not in result.stdout + result.stderr
        assert "redis://:***@127.0.0.1" in result.stderr
    bad_port = run_cli(f"redis://:{secret}@127.0.0.1:notaport/0")
    assert bad_port.returncode == 2 and secret not in bad_port.stderr
    client = redis.Redis.from_url(own_redis.url)
    try:
        client.config_set("requirepass", secret)
        authed = redis.Redis.from_url(f"redis://:{secret}@127.0.0.1:{own_redis.port}/0")
        authed.set(health_key("p-1"), json.dumps({"status": "HEALTHY"}))
        for url in (
            f"redis://:{secret}@127.0.0.1:{own_redis.port}/0",
            f"redis://127.0.0.1:{own_redis.port}/0?password={secret}",
        ):
            result = run_cli(url, "--json")
            assert result.returncode == 0, result.stderr
            doc = json.loads(result.stdout)
            assert [i["instance"] for i in doc["instances"]] == ["p-1"]
            assert secret not in result.stdout + result.stderr
            assert "***" in doc["redis_url"]
        authed.config_set("requirepass", "")
        authed.close()
    finally:
        client.close()


def test_watch_tables_outlive_a_redis_blip(own_redis: RestartableRedis) -> None:
    # The table view of --watch ended with exit 2 at the first failed refresh.
    probe = redis.Redis.from_url(own_redis.url)
    probe.set(health_key("w-2"), json.dumps({"status": "HEALTHY", "health_score": 1.0}), ex=600)
    connections = int(probe.info("stats")["total_connections_received"])
    env = {**os.environ, "ANTIFRAGILE_REDIS_URL": own_redis.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "antifragile", "health", "--watch", "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        # Each refresh reads Redis on a new connection: a second one means the first read
        # (which must succeed) is done and the watch is refreshing. Start-up alone can take
        # longer than any fixed wait on a loaded machine.
        eventually_sync(
            lambda: (
                int(probe.info("stats")["total_connections_received"]) >= connections + 2
                or proc.poll() is not None
            ),
            timeout=30,
        )
        probe.close()
        assert proc.poll() is None
        own_redis.stop()
        deadline = time.monotonic() + 3.0  # many failed refreshes at 0.1 s
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        own_redis.start()
        back = redis.Redis.from_url(own_redis.url)
        connections = int(back.info("stats")["total_connections_received"])
        # Two refreshes on the restarted Redis: the last table is of a Redis that came back.
        eventually_sync(
            lambda: int(back.info("stats")["total_connections_received"]) >= connections + 2,
            timeout=30,
        )
        back.close()
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the watch ends cleanly
        out, err = proc.communicate(timeout=30)
    assert "Traceback" not in err
    assert proc.returncode == 0, err
    assert "no instances are publishing health" in out  # Redis came back empty
