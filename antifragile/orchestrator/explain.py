"""What the recovery queue tells people: why requests wait, what a merge did not apply.

Pure text and audits over the orchestrator's contracts, shared by the workflow (its
query and UI details), the client and CLI (``antifragile recovery queue``), and the
benchmarks and tests (the admission-order audit).
"""

from __future__ import annotations

import heapq
from datetime import datetime

from antifragile.models.orchestrator import AdmissionRecord, IgnoredSetting, QueueView
from antifragile.models.recovery import RecoveryRequest

_POLICY_SETTINGS = {
    "max_retry_attempts": "max_attempts",
    "initial_delay_ms": "initial_delay_ms",
    "max_delay_ms": "max_delay_ms",
    "backoff_multiplier": "multiplier",
    "jitter": "jitter",
    "jitter_ratio": "jitter_ratio",
}


def ignored_settings(kept: RecoveryRequest | None, new: RecoveryRequest) -> list[IgnoredSetting]:
    """Settings of ``new`` that differ from the recovery ``kept`` (which keeps its own).

    One recovery runs per service, so a later request joins it or merges into it: its
    priority counts (the more urgent is kept), its reason and requester are recorded, and
    every other setting that differs is reported here, so the requester knows. The
    constitutional hash is never shown. ``kept`` None (unknown): nothing is reported.
    """
    if kept is None:
        return []
    ignored: list[IgnoredSetting] = []

    def differ(setting: str, requested: object, keeps: object) -> None:
        if requested != keeps:
            ignored.append(
                IgnoredSetting(setting=setting, requested=str(requested), kept=str(keeps))
            )

    differ("strategy", new.strategy.value, kept.strategy.value)
    differ("probe", new.probe, kept.probe)
    differ("probe_timeout_s", f"{new.probe_timeout_s:g}", f"{kept.probe_timeout_s:g}")
    differ("action", new.action, kept.action)
    for name, setting in _POLICY_SETTINGS.items():
        differ(setting, getattr(new.policy, name), getattr(kept.policy, name))
    if new.constitutional_hash != kept.constitutional_hash:
        ignored.append(
            IgnoredSetting(setting="constitutional_hash", requested="(differs)", kept="(its own)")
        )
    return ignored


def format_duration(seconds: float) -> str:
    """``42s``, ``7m``, ``3.5h`` (never negative)."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def why_waiting(view: QueueView, now: datetime) -> str:
    """Why requests wait, from a queue view read at ``now`` ("" when nothing waits).

    Names the cause: a retry-budget pause (with its end), the admission rate limit, or
    every slot busy and by whom (with how long each has run, computed at ``now``, not at
    the orchestrator's last update).
    """
    if not view.waiting_total:
        return ""
    if view.paused:
        return view.pause_reason or "admissions paused"
    throttle = view.throttle_reason or view.pause_reason
    if throttle:
        return throttle
    if len(view.running) >= view.max_concurrent:
        shown = [
            f"{r.service} ({format_duration((now - r.admitted_at).total_seconds())})"
            for r in view.running[:5]
        ]
        more = f" and {len(view.running) - 5} more" if len(view.running) > 5 else ""
        return f"all {view.max_concurrent} slots busy: " + ", ".join(shown) + more
    return "a slot is free: being admitted"


def admission_order_violations(records: list[AdmissionRecord]) -> int:
    """Admissions that skipped a better-ranked request that was already waiting.

    ``records`` must be every admission in order (e.g. an audit of a whole run of the
    benchmark). Replays the queue: before admission ``i``, every request with
    ``seq <= seen_seq`` that is not yet admitted was waiting, so none may rank below it.
    Ranks are taken from the records (valid when no request was reprioritised or removed
    while waiting). O(n log n).
    """
    by_seq = sorted(records, key=lambda r: r.seq)
    waiting: list[tuple[int, int]] = []
    admitted: set[int] = set()
    pushed = 0
    violations = 0
    for record in records:
        while pushed < len(by_seq) and by_seq[pushed].seq <= record.seen_seq:
            heapq.heappush(waiting, (by_seq[pushed].rank, by_seq[pushed].seq))
            pushed += 1
        while waiting and waiting[0][1] in admitted:
            heapq.heappop(waiting)
        if waiting and waiting[0][0] < record.rank:
            violations += 1
        admitted.add(record.seq)
    return violations
