"""Secrets stay in the worker: a recovery probes an authenticated Redis and calls a webhook
by name; the password and token never reach history, queries, summaries, details or logs.

Real pieces only: the real worker (every workflow and activity, the orchestrator included)
on the time-skipping server, a real ``redis-server --requirepass`` started here, and a real
HTTP receiver for the webhook.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.common import CommonActivities
from activities.recovery import RecoveryActivities
from antifragile.constants import (
    ORCHESTRATOR_WORKFLOW_TYPE,
    QUERY_QUEUE,
    SIGNAL_REQUEST_RECOVERY,
    orchestrator_workflow_id,
    recovery_workflow_id,
)
from antifragile.models.orchestrator import OrchestratorInput, QueueView
from antifragile.models.recovery import (
    ProbeInput,
    RecoveryActionInput,
    RecoveryPolicy,
    RecoveryRequest,
    RecoveryResult,
    RecoveryState,
    RecoveryStatus,
    RecoveryStrategy,
)
from antifragile.orchestrator.client import request_recovery
from antifragile.policy import ApproverConfig, RecoveryPolicyConfig, WorkerPolicy
from antifragile.settings import Settings
from antifragile.stack import binaries
from antifragile.stack.processes import free_port
from tests.conftest import WorkerFactory

PASSWORD = "pw-7Kq9-never-in-history"
TOKEN = "tok-Zx81-never-in-history"
PASSWORD_ENV = "AF_TEST_CACHE_PASSWORD"
TOKEN_ENV = "AF_TEST_HOOK_TOKEN"


@contextlib.contextmanager
def redis_with_password(password: str, log: Path) -> Iterator[int]:
    """A real redis-server that answers only with ``password``; yields its port."""
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                binaries.redis_server(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                password,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        client = redis.Redis(host="127.0.0.1", port=port, password=password)
        for _ in range(200):
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                threading.Event().wait(0.05)
        else:
            raise RuntimeError(f"redis-server did not start: {log.read_text()[-500:]}")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def auth_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real redis-server that answers only with ``PASSWORD``; yields its port."""
    log = tmp_path_factory.mktemp("auth-redis") / "redis.log"
    with redis_with_password(PASSWORD, log) as port:
        yield port


class Receiver:
    """A real HTTP server recording the webhook calls it gets."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        calls = self.calls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                calls.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                )
                self.send_response(200)
                self.end_headers()

            def do_GET(self) -> None:
                calls.append({"path": self.path, "headers": dict(self.headers), "body": None})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def policy_for(redis_port: int, hook_port: int) -> WorkerPolicy:
    return WorkerPolicy(
        recovery=RecoveryPolicyConfig.model_validate(
            {
                "probes": {
                    "cache": f"redis://:${{{PASSWORD_ENV}}}@127.0.0.1:{redis_port}/0",
                    "cache-wrong": f"redis://:wrong-${{{PASSWORD_ENV}}}@127.0.0.1:{redis_port}/0",
                },
                "webhooks": {
                    "pager": {
                        "url": f"http://127.0.0.1:{hook_port}/hook?sig=${{{TOKEN_ENV}}}",
                        "headers": {"Authorization": f"Bearer ${{{TOKEN_ENV}}}"},
                    }
                },
            }
        )
    )


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


def readable(history_json: str) -> str:
    """A history export plus every payload in it decoded (payload data is base64 there)."""
    decoded: list[str] = [history_json]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "data" and isinstance(value, str):
                    with contextlib.suppress(ValueError):
                        decoded.append(base64.b64decode(value).decode(errors="replace"))
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(history_json))
    return "\n".join(decoded)


def assert_no_secret(where: str, text: str) -> None:
    assert PASSWORD not in text, f"the Redis password leaked into {where}"
    assert TOKEN not in text, f"the webhook token leaked into {where}"


# --- the probe, against a real authenticated Redis ------------------------------------------


async def test_a_named_probe_pings_an_authenticated_redis(
    auth_redis: int, receiver: Receiver, secrets_env: None
) -> None:
    common = CommonActivities(Settings(), policy_for(auth_redis, receiver.port))
    env = ActivityEnvironment()
    good = await env.run(common.probe_service, ProbeInput(service="cache", url="probe:cache"))
    assert good.healthy, good.detail
    wrong = await env.run(
        common.probe_service, ProbeInput(service="cache", url="probe:cache-wrong")
    )
    assert not wrong.healthy
    assert "AuthenticationError" in wrong.detail or "WRONGPASS" in wrong.detail, wrong.detail
    assert_no_secret("the probe's detail", wrong.detail)
    # Without the password, the same Redis refuses: the probe really authenticates.
    bare = await env.run(
        common.probe_service,
        ProbeInput(service="cache", url=f"redis://127.0.0.1:{auth_redis}/0"),
    )
    assert not bare.healthy and "Authentication" in bare.detail, bare.detail


async def test_a_missing_variable_is_a_failed_probe_naming_it(
    auth_redis: int, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    common = CommonActivities(Settings(), policy_for(auth_redis, receiver.port))
    with pytest.raises(Exception) as info:
        await ActivityEnvironment().run(
            common.probe_service, ProbeInput(service="cache", url="probe:cache")
        )
    assert f"needs ${{{PASSWORD_ENV}}}" in str(info.value)


async def test_a_named_webhook_gets_its_headers_and_answers_are_redacted(
    auth_redis: int, receiver: Receiver, secrets_env: None
) -> None:
    actions = RecoveryActivities(Settings(), policy_for(auth_redis, receiver.port))
    result = await ActivityEnvironment().run(
        actions.run_recovery_action,
        RecoveryActionInput(service="cache", action="webhook:pager", attempt=1),
    )
    assert result.ok, result.detail
    assert receiver.calls[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert receiver.calls[0]["path"] == f"/hook?sig={TOKEN}"
    assert receiver.calls[0]["body"] == {"service": "cache", "attempt": 1, "reason": ""}
    assert_no_secret("the action's result", result.model_dump_json())


APPROVER_KEY_ENV_NAME = "AF_TEST_ALICE_KEY"
APPROVER_KEY = "alice-key-Qw3-never-in-history"
AWS_SECRET = "aws-Rt5-never-in-history"
DB_PASSWORD = "db-Lp0-never-in-history"


@pytest.mark.parametrize(
    "script",
    [
        # a careless script (or `curl -v`) printing its configuration on failure
        f'echo "token=${TOKEN_ENV} pw=${PASSWORD_ENV}"; exit 3',
        # the tail kept is the last 500 characters: a secret cut in two by it
        f'printf "%s" "${TOKEN_ENV}"; printf "x%.0s" $(seq 1 490); exit 3',
        # secrets of the worker's environment the policy does not name
        'echo "$AWS_SECRET_ACCESS_KEY $DATABASE_URL"; exit 3',
    ],
)
async def test_a_failing_command_never_records_a_secret_of_the_environment(
    auth_redis: int,
    receiver: Receiver,
    secrets_env: None,
    monkeypatch: pytest.MonkeyPatch,
    script: str,
) -> None:
    monkeypatch.setenv(APPROVER_KEY_ENV_NAME, APPROVER_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("DATABASE_URL", f"postgres://app:{DB_PASSWORD}@db:5432/app")
    monkeypatch.setenv("AF_TEST_USE_KEY", "1")  # short: not guessed to be a secret
    policy = policy_for(auth_redis, receiver.port)
    policy.recovery.commands["noisy"] = ["sh", "-c", script]
    policy.recovery.approvers["alice"] = ApproverConfig(key_env=APPROVER_KEY_ENV_NAME)
    result = await ActivityEnvironment().run(
        RecoveryActivities(Settings(), policy).run_recovery_action,
        RecoveryActionInput(service="cache", action="command:noisy", attempt=1),
    )
    assert not result.ok and "exited 3" in result.detail, result.detail
    assert "***" in result.detail, result.detail
    assert_no_secret("the command's recorded output", result.detail)
    assert TOKEN[-8:] not in result.detail, result.detail
    assert AWS_SECRET not in result.detail and DB_PASSWORD not in result.detail, result.detail


async def test_a_command_never_gets_an_approvers_key(
    auth_redis: int, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With an approver's key a command could sign approvals: it stays with the worker.
    monkeypatch.setenv(APPROVER_KEY_ENV_NAME, APPROVER_KEY)
    monkeypatch.setenv("ANTIFRAGILE_APPROVER_KEY", APPROVER_KEY)
    policy = policy_for(auth_redis, receiver.port)
    policy.recovery.approvers["alice"] = ApproverConfig(key_env=APPROVER_KEY_ENV_NAME)
    policy.recovery.commands["keys"] = [
        "sh",
        "-c",
        f'test -z "${APPROVER_KEY_ENV_NAME}" && test -z "$ANTIFRAGILE_APPROVER_KEY"',
    ]
    result = await ActivityEnvironment().run(
        RecoveryActivities(Settings(), policy).run_recovery_action,
        RecoveryActionInput(service="cache", action="command:keys", attempt=1),
    )
    assert result.ok, "a command was given an approver's key"


class Redirector:
    """A real HTTP server answering every request with a 302 to ``target``."""

    def __init__(self, target: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_a_redirect_never_carries_a_webhooks_or_probes_credential_elsewhere(
    receiver: Receiver, secrets_env: None
) -> None:
    # The receiver answers a redirect to another host (``localhost`` is not 127.0.0.1 for
    # urllib): it must not get the token, nor a GET made of the POST that counts as sent.
    other = f"http://localhost:{receiver.port}/elsewhere"
    redirector = Redirector(other)
    try:
        policy = WorkerPolicy(
            recovery=RecoveryPolicyConfig.model_validate(
                {
                    "webhooks": {
                        "pager": {
                            "url": f"http://127.0.0.1:{redirector.port}/hook",
                            "headers": {"Authorization": f"Bearer ${{{TOKEN_ENV}}}"},
                        }
                    },
                    "probes": {
                        "web": f"http://ops:${{{PASSWORD_ENV}}}@127.0.0.1:{redirector.port}/h"
                    },
                }
            )
        )
        env = ActivityEnvironment()
        action = await env.run(
            RecoveryActivities(Settings(), policy).run_recovery_action,
            RecoveryActionInput(service="svc", action="webhook:pager", attempt=1),
        )
        assert not action.ok and "HTTP 302" in action.detail, action.detail
        assert not receiver.calls, "the webhook followed a redirect with its headers"
        probe = await env.run(
            CommonActivities(Settings(), policy).probe_service,
            ProbeInput(service="svc", url="probe:web"),
        )
        # A probe may follow a redirect (/health -> /health/), without the credential.
        assert probe.healthy, probe.detail
        assert [c["path"] for c in receiver.calls] == ["/elsewhere"]
        assert "Authorization" not in receiver.calls[0]["headers"], "the probe's password went on"
    finally:
        redirector.close()


@pytest.mark.parametrize("password", ["pa/ss@wo#rd", "p:w?x%41 y"])
async def test_a_raw_password_with_url_characters_authenticates_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, password: str
) -> None:
    # The variable holds the raw password (as a secret store gives it); put as is into the
    # URL, '/', '@', '#' or '?' cut it short and sent the rest as host, path or fragment.
    monkeypatch.setenv(PASSWORD_ENV, password)
    with redis_with_password(password, tmp_path / "redis.log") as port:
        policy = WorkerPolicy(
            recovery=RecoveryPolicyConfig.model_validate(
                {"probes": {"cache": f"redis://:${{{PASSWORD_ENV}}}@127.0.0.1:{port}/0"}}
            )
        )
        result = await ActivityEnvironment().run(
            CommonActivities(Settings(), policy).probe_service,
            ProbeInput(service="cache", url="probe:cache"),
        )
    assert result.healthy, result.detail
    assert password not in result.detail


async def test_a_webhook_with_user_info_sends_basic_auth_and_never_resolves_it_as_a_host(
    receiver: Receiver, secrets_env: None
) -> None:
    # urllib left user-info in the host name: the call failed on a DNS query for
    # "ops:PASSWORD@127.0.0.1", which carried the password to the resolver.
    policy = WorkerPolicy(
        recovery=RecoveryPolicyConfig.model_validate(
            {"webhooks": {"pager": f"http://ops:${{{TOKEN_ENV}}}@127.0.0.1:{receiver.port}/hook"}}
        )
    )
    result = await ActivityEnvironment().run(
        RecoveryActivities(Settings(), policy).run_recovery_action,
        RecoveryActionInput(service="svc", action="webhook:pager", attempt=1),
    )
    assert result.ok, result.detail
    expected = "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()
    assert receiver.calls[0]["headers"]["Authorization"] == expected
    assert receiver.calls[0]["path"] == "/hook"


async def test_a_401_that_echoes_the_header_never_reaches_the_result(secrets_env: None) -> None:
    class Echo(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = f"bad token: {self.headers.get('Authorization')}".encode()
            self.send_response(401, f"denied {self.headers.get('Authorization')}")
            self.send_header("WWW-Authenticate", str(self.headers.get("Authorization")))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        policy = WorkerPolicy(
            recovery=RecoveryPolicyConfig.model_validate(
                {
                    "webhooks": {
                        "pager": {
                            "url": f"http://127.0.0.1:{server.server_address[1]}/hook",
                            "headers": {"Authorization": f"Bearer ${{{TOKEN_ENV}}}"},
                        }
                    }
                }
            )
        )
        result = await ActivityEnvironment().run(
            RecoveryActivities(Settings(), policy).run_recovery_action,
            RecoveryActionInput(service="svc", action="webhook:pager", attempt=1),
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.detail == "webhook answered HTTP 401"
    assert_no_secret("the action's result", result.model_dump_json())


# --- a whole recovery through the orchestrator -----------------------------------------------


async def test_nothing_secret_reaches_history_queries_summaries_details_or_logs(
    time_skipping_env: WorkflowEnvironment,
    start_worker: WorkerFactory,
    task_queue: str,
    auth_redis: int,
    receiver: Receiver,
    secrets_env: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = time_skipping_env.client
    caplog.set_level(logging.DEBUG)
    request = RecoveryRequest(
        service="cache-secrets",
        probe="probe:cache",
        action="webhook:pager",
        strategy=RecoveryStrategy.IMMEDIATE,
        policy=RecoveryPolicy(max_retry_attempts=2),
        requested_by="test",
    )
    orchestrator = client.get_workflow_handle(orchestrator_workflow_id(task_queue))
    async with start_worker(client, task_queue, policy=policy_for(auth_redis, receiver.port)):
        await request_recovery(client, request, task_queue=task_queue)
        handle = client.get_workflow_handle(
            recovery_workflow_id(request.service), result_type=RecoveryResult
        )
        deadline = asyncio.get_running_loop().time() + 60
        result: RecoveryResult | None = None
        while result is None:
            try:
                result = await handle.result()
            except Exception:
                # Admission creates the workflow a moment after the request.
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)
        status = await handle.query("status", result_type=RecoveryStatus)
        metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
        queue = await orchestrator.query(QUERY_QUEUE, result_type=QueueView)
        desc = await handle.describe()
        texts = {
            "the recovery's history": readable((await handle.fetch_history()).to_json()),
            "the orchestrator's history": readable((await orchestrator.fetch_history()).to_json()),
            "the status query": status.model_dump_json(),
            "the queue query": queue.model_dump_json(),
            "the summary and static details": f"{await desc.static_summary()} "
            f"{await desc.static_details()}",
            "the current details": metadata.current_details,
            "the worker's logs": caplog.text,
        }
        await orchestrator.terminate("test over")
    assert result.state is RecoveryState.SUCCEEDED, result.message
    assert receiver.calls and receiver.calls[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert status.probe == "probe:cache"
    # The search reads the payloads: the probe's name is there, its password is not.
    assert '"probe":"probe:cache"' in texts["the recovery's history"]
    assert '"probe":"probe:cache"' in texts["the orchestrator's history"]
    for where, text in texts.items():
        assert_no_secret(where, text)


def test_the_search_finds_a_secret_that_is_there() -> None:
    # The search above is meaningful: the same check finds a secret that is there.
    payload = base64.b64encode(json.dumps({"probe": f"redis://:{PASSWORD}@h/0"}).encode())
    history = json.dumps({"events": [{"input": {"payloads": [{"data": payload.decode()}]}}]})
    assert PASSWORD not in history  # base64 hides it from a plain search …
    with pytest.raises(AssertionError, match="leaked"):
        assert_no_secret("a history", readable(history))  # … not from this one


# --- a request written by hand, bypassing the CLI and the API --------------------------------


async def test_a_hand_written_request_with_a_credential_is_never_echoed_nor_used(
    time_skipping_env: WorkflowEnvironment,
    start_worker: WorkerFactory,
    task_queue: str,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``temporal workflow signal --name request_recovery --input '{"request": …}'``.

    The payload is decoded from JSON, where the CLI's refusal does not apply (old histories
    must replay). The signal itself is the sender's own doing and stays in the
    orchestrator's history as sent; nothing the system writes after it repeats the
    password, and the worker never calls the URL.
    """
    client = time_skipping_env.client
    caplog.set_level(logging.DEBUG)
    service = "hand-written"
    probe = f"http://ops:{PASSWORD}@127.0.0.1:{receiver.port}/health?token={TOKEN}"
    raw = {
        "request": {
            "service": service,
            "probe": probe,
            "strategy": "immediate",
            "policy": {"max_retry_attempts": 1},
        }
    }
    orchestrator_id = orchestrator_workflow_id(task_queue)
    async with start_worker(client, task_queue, policy=WorkerPolicy()):
        orchestrator = await client.start_workflow(
            ORCHESTRATOR_WORKFLOW_TYPE,
            OrchestratorInput(),
            id=orchestrator_id,
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal=SIGNAL_REQUEST_RECOVERY,
            start_signal_args=[raw],  # a dict: sent as written, never validated here
        )
        handle = client.get_workflow_handle(
            recovery_workflow_id(service), result_type=RecoveryResult
        )
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            # Admission creates the workflow a moment after the request; the refused probe
            # counts as a failed attempt, which escalates (one attempt per round).
            with contextlib.suppress(RPCError):
                status = await handle.query("status", result_type=RecoveryStatus)
                if status.state is RecoveryState.AWAITING_APPROVAL or status.state.terminal:
                    break
            assert asyncio.get_running_loop().time() < deadline, "no attempt was made"
            await asyncio.sleep(0.2)
        status = await handle.query("status", result_type=RecoveryStatus)
        metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
        queue = await orchestrator.query(QUERY_QUEUE, result_type=QueueView)
        desc = await handle.describe()
        orchestrator_history = readable((await orchestrator.fetch_history()).to_json())
        texts = {
            "the recovery's history": readable((await handle.fetch_history()).to_json()),
            "the status query": status.model_dump_json(),
            "the queue query": queue.model_dump_json(),
            "the summary and static details": f"{await desc.static_summary()} "
            f"{await desc.static_details()}",
            "the current details": metadata.current_details,
            "the worker's logs": caplog.text,
        }
        await orchestrator.terminate("test over")
    assert "refused: a credential" in (status.last_error or ""), status
    assert status.probe.startswith("http://***@127.0.0.1:") and "token=***" in status.probe
    assert not receiver.calls, "the worker called a URL with a credential in it"
    for where, text in texts.items():
        assert_no_secret(where, text)
    # The sender's own signal is the one place in history that holds what they sent.
    assert orchestrator_history.count(PASSWORD) == 1, "the orchestrator repeated the password"
