"""Names shared between clients, workers and workflows: the one place they are defined."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from temporalio.common import SearchAttributeKey

DEFAULT_TASK_QUEUE = "antifragile"
DEMO_TASK_QUEUE = "antifragile-demo"
"""Task queue of ``antifragile demo``'s own worker (its own policy and orchestrator)."""

# Workflow ids are meaningful so the UI and the CLI can find a workflow by service.
RECOVERY_WORKFLOW_ID_PREFIX = "recovery-"
ORCHESTRATOR_WORKFLOW_ID = "recovery-orchestrator"
CHAOS_WORKFLOW_ID_PREFIX = "chaos-"


def orchestrator_workflow_id(task_queue: str = DEFAULT_TASK_QUEUE) -> str:
    """The recovery orchestrator of a task queue's fleet.

    ``recovery-orchestrator`` for the default queue; a fleet on another task queue (a
    separate deployment, or a test) has its own, ``recovery-orchestrator-{queue}``, so
    its queue is never served by another fleet's workers.
    """
    if task_queue == DEFAULT_TASK_QUEUE:
        return ORCHESTRATOR_WORKFLOW_ID
    return f"{ORCHESTRATOR_WORKFLOW_ID}-{task_queue}"


INTAKE_SHARDS = 16
"""Intake workflows in front of each orchestrator (see :func:`intake_workflow_id`)."""


def intake_shard(service: str, shards: int = INTAKE_SHARDS) -> int:
    """The intake shard of a service's fire-and-forget requests, stable across processes.

    It is the CRC-32 of the name, not Python's salted ``hash``, so every process reporting
    the same service uses the same intake.
    """
    return zlib.crc32(service.encode("utf-8")) % shards


def intake_workflow_id(orchestrator_id: str, shard: int) -> str:
    """The workflow id of one intake of an orchestrator: ``recovery-orchestrator-intake-07``.

    Fire-and-forget requests (the runtime bridge of every process, storms) go to one of
    :data:`INTAKE_SHARDS` intakes, which forward them to the orchestrator in batches: the
    orchestrator then receives a few signals per storm however many processes report.
    """
    return f"{orchestrator_id}-intake-{shard:02d}"


def recovery_workflow_id(service: str) -> str:
    """The workflow id of a service's recovery: ``recovery-{service}``."""
    return f"{RECOVERY_WORKFLOW_ID_PREFIX}{service}"


def chaos_workflow_id(name: str, short_id: str) -> str:
    """The workflow id of a chaos experiment: ``chaos-{name}-{short id}``."""
    return f"{CHAOS_WORKFLOW_ID_PREFIX}{name}-{short_id}"


# Custom search attributes, registered by the dev stack, the tests and the compose stack.
# Their keys are built on first use (module __getattr__ below): temporalio, ~0.1 s to
# import, stays out of processes that only need names (the CLI's `chaos stop --all`).
if TYPE_CHECKING:
    SA_KIND: SearchAttributeKey[str]
    SA_SERVICE: SearchAttributeKey[str]
    SA_STATE: SearchAttributeKey[str]
    SA_STRATEGY: SearchAttributeKey[str]
    SA_CHAOS_TYPE: SearchAttributeKey[str]
    SA_PRIORITY: SearchAttributeKey[int]

_SEARCH_ATTRIBUTE_KEYS = {
    "SA_KIND": ("AfKind", "keyword"),
    "SA_SERVICE": ("AfService", "keyword"),
    "SA_STATE": ("AfState", "keyword"),
    "SA_STRATEGY": ("AfStrategy", "keyword"),
    "SA_CHAOS_TYPE": ("AfChaosType", "keyword"),
    "SA_PRIORITY": ("AfPriority", "int"),
}


def __getattr__(name: str) -> Any:
    spec = _SEARCH_ATTRIBUTE_KEYS.get(name)
    if spec is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from temporalio.common import SearchAttributeKey

    attr, kind = spec
    key = (
        SearchAttributeKey.for_int(attr) if kind == "int" else SearchAttributeKey.for_keyword(attr)
    )
    globals()[name] = key  # built once; later reads find it without this function
    return key


SEARCH_ATTRIBUTES: dict[str, str] = {
    "AfKind": "Keyword",
    "AfService": "Keyword",
    "AfState": "Keyword",
    "AfStrategy": "Keyword",
    "AfChaosType": "Keyword",
    "AfPriority": "Int",
}
"""Name → Temporal type of every custom search attribute (the CLI's ``--search-attribute``)."""

KIND_RECOVERY = "recovery"
KIND_CHAOS = "chaos"
KIND_ORCHESTRATOR = "orchestrator"
KIND_INTAKE = "recovery-intake"

# Redis keys of the fault plane, health snapshots and metering.
REDIS_FAULT_KEY_PREFIX = "af:fault:"
REDIS_FAULT_CHANNEL = "af:faults"
REDIS_HALT_KEY = "af:halt"
REDIS_HEALTH_KEY_PREFIX = "af:health:"
REDIS_METERING_STREAM = "af:metering"

# Signal, query and update names: the CLI and `temporal workflow signal` use these strings.
SIGNAL_APPROVE = "approve"
SIGNAL_REJECT = "reject"
SIGNAL_HEALTH_CHANGED = "health_changed"
SIGNAL_JOIN = "join"
SIGNAL_EMERGENCY_STOP = "emergency_stop"
SIGNAL_STAND_DOWN = "stand_down"
QUERY_STATUS = "status"
QUERY_QUEUE = "queue"

# The recovery orchestrator's messages.
UPDATE_ENQUEUE = "enqueue"
UPDATE_REPRIORITISE = "reprioritise"
UPDATE_REMOVE = "remove"
SIGNAL_REQUEST_RECOVERY = "request_recovery"
SIGNAL_REQUEST_RECOVERIES = "request_recoveries"
"""Fire-and-forget enqueue (signal-with-start), for callers that need no position back."""
SIGNAL_RECOVERY_WAITING = "recovery_waiting"
"""Recovery → orchestrator: it waits for a person; its slot is free."""
SIGNAL_RECOVERY_RESUMING = "recovery_resuming"
"""Recovery → orchestrator: approved; queue it again for a slot."""
SIGNAL_SLOT_GRANTED = "slot_granted"
"""Orchestrator → recovery: a resumed recovery has its slot again."""
SIGNAL_ATTEMPT_FINISHED = "attempt_finished"
"""Recovery → orchestrator: one attempt ended (feeds the retry budget)."""
ORCHESTRATOR_WORKFLOW_TYPE = "RecoveryOrchestratorWorkflow"
INTAKE_WORKFLOW_TYPE = "RecoveryIntakeWorkflow"
QUERY_INTAKE = "intake"
"""Query of an intake: what it holds and has forwarded."""
STATE_ACTIVE = "ACTIVE"
STATE_PAUSED = "PAUSED"
STATE_THROTTLED = "THROTTLED"

# Workflow types. The workflows declare them (``@workflow.defn(name=...)``); clients start,
# list and describe workflows by them.
RECOVERY_WORKFLOW_TYPE = "RecoveryWorkflow"
CHAOS_WORKFLOW_TYPE = "ChaosExperimentWorkflow"
GUARDIAN_WORKFLOW_TYPE = "ChaosGuardianWorkflow"
QUERY_REPORT = "report"
"""Query of a chaos experiment: its report so far (the result once it has ended)."""

# Activity names: each activity is registered under its name (``@activity.defn(name=...)``)
# and workflows call it by that name. Names, not typed method references: a reference
# would import the activities (Redis, HTTP clients) into every workflow sandbox.
ACTIVITY_VALIDATE_HASH = "validate_constitutional_hash"
ACTIVITY_AUTHORIZE_APPROVER = "authorize_approver"
ACTIVITY_PROBE_SERVICE = "probe_service"
ACTIVITY_RUN_RECOVERY_ACTION = "run_recovery_action"
ACTIVITY_LOAD_ORCHESTRATOR_LIMITS = "load_orchestrator_limits"
ACTIVITY_FORWARD_RECOVERY_REQUESTS = "forward_recovery_requests"
ACTIVITY_WATCH_RECOVERIES = "watch_recoveries"
ACTIVITY_VALIDATE_CHAOS_SCENARIO = "validate_chaos_scenario"
ACTIVITY_CHECK_HALT_SWITCH = "check_halt_switch"
ACTIVITY_INJECT_FAULT = "inject_fault"
ACTIVITY_RENEW_FAULT_LEASE = "renew_fault_lease"
ACTIVITY_REMOVE_FAULT = "remove_fault"
ACTIVITY_MEASURE_HEALTH = "measure_health"
ACTIVITY_CHECK_EXPERIMENT_RUNNING = "check_experiment_running"
ACTIVITY_COLLECT_EXPERIMENT_IMPACT = "collect_experiment_impact"

# --- Learning from stress: the durable ledger of each dependency (issue 14) -----------
PROFILE_WORKFLOW_TYPE = "DependencyProfileWorkflow"
PROFILE_WORKFLOW_ID_PREFIX = "profile-"
KIND_PROFILE = "profile"
"""``AfKind`` of a dependency's ledger (the dependency is in its id, ``profile-{dependency}``)."""
SIGNAL_RECORD_OBSERVATIONS = "record_observations"
"""A batch of observations for a dependency's ledger (de-duplicated by kind and source id)."""
QUERY_PROFILE = "profile"
"""Query of a dependency's ledger: its observations and counts."""
ACTIVITY_RECORD_OBSERVATIONS = "record_dependency_observations"
"""Signal-with-start of ``profile-{dependency}`` from a workflow (experiments, recoveries)."""

# --- Adaptive recovery strategy (issue 14): a recovery reads its ledger ----------------
ACTIVITY_READ_LEARNED_RECOVERIES = "read_learned_recoveries"
"""Reads the verified times to recover of ``profile-{service}`` for an ``adaptive`` round."""


def profile_workflow_id(dependency: str) -> str:
    """The workflow id of a dependency's ledger: ``profile-{dependency}``."""
    return f"{PROFILE_WORKFLOW_ID_PREFIX}{dependency}"


# --- Learning from stress: audited, reversible adaptation (issue 14, apply part) ------
SIGNAL_APPLY_ADVICE = "apply_advice"
"""Ask a dependency's ledger to apply its advice (an approver, a request id)."""
SIGNAL_REVERT_CONFIG = "revert_config"
"""Ask a dependency's ledger to undo the config version in force."""
QUERY_CONFIG_CHANGE = "config_change"
"""Query of a ledger: the recorded change of one request id (None: not decided yet)."""
ACTIVITY_READ_CONFIG = "read_dependency_config"
"""Read the config version in force from Redis and the worker's adaptation policy."""
ACTIVITY_PUBLISH_CONFIG = "publish_dependency_config"
"""Publish (or revert) a dependency's config version in Redis, once per request id."""
PATCH_PROFILE_AUTO_ADAPT = "profile-auto-adaptation"
"""Patch: a ledger reads the adaptation policy after a batch that changed its advice."""

# --- Traffic windows into the ledgers (issue 14): the worker's harvester -------------
# Window length and harvest grace are settings (``Settings.traffic_window_s`` and
# ``Settings.harvest_grace_s``, defaults in ``antifragile.settings``): a fleet must agree.
