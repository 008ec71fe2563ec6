"""Which advised values a change applies, and the safe band of ``adaptation.auto`` (pure).

A dependency's ledger decides the values of an ``apply_advice`` request itself, from its
observations and the config version in force, with these functions: the decision is in
its history and can be recomputed. No I/O, no clock: workflows import this module.

Only the settings a running service can take live (``DependencySettings``: the breaker's
open duration, failure-rate and consecutive-failure thresholds, the guard's timeout) are
applied; advice for the others is reported "not applied live" with why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from antifragile.models.adaptation import AUTO_BY, AdaptationBand
from antifragile.models.learning import Advice, ConfigVersion, CurrentSettings, DependencySettings

LIVE_SETTINGS: dict[str, str] = {
    "breaker.open_duration_s": "open_duration_s",
    "breaker.failure_rate_threshold": "failure_rate_threshold",
    "breaker.failure_threshold": "failure_threshold",
    "guard.timeout_s": "timeout_s",
}
"""Advice setting -> the :class:`DependencySettings` field a running service applies live."""

NOT_LIVE: dict[str, str] = {
    "breaker.minimum_calls": "the breaker's window is fixed when the runtime starts",
    "recovery.initial_delay_ms": "a recovery schedule is set per recovery request",
    "recovery.backoff_multiplier": "a recovery schedule is set per recovery request",
    "recovery.max_delay_ms": "a recovery schedule is set per recovery request",
    "recovery.max_retry_attempts": "a recovery schedule is set per recovery request",
}
"""Advice settings that are not applied live, and why (``--setting`` still accepts them)."""

_INTEGER_FIELDS = frozenset({"failure_threshold"})


def setting_name(name: str) -> str:
    """The advice setting ``name`` stands for (``open_duration_s`` -> ``breaker.open_duration_s``).

    Raises:
        ValueError: not a setting advice can name (the message lists the known ones).
    """
    known = [*LIVE_SETTINGS, *NOT_LIVE]
    if name in known:
        return name
    matches = [k for k in known if k.split(".", 1)[1] == name]
    if len(matches) == 1:
        return matches[0]
    raise ValueError(f"unknown setting {name!r}: one of {', '.join(known)}")


def in_force(version: ConfigVersion | None) -> CurrentSettings:
    """The library defaults with the settings ``version`` sets over them (None: defaults)."""
    given = {} if version is None else version.settings.model_dump(exclude_none=True)
    return CurrentSettings(**given)


@dataclass(frozen=True)
class ApplyPlan:
    """What a change would publish.

    Attributes:
        settings: The settings of the new version: those in force with the changes over
            them.
        applied: Advice setting -> (value in force, new value), for each that changes.
        not_applied: Advice setting -> why it is left as it is.
        base: The settings of the version in force (what ``settings`` changes).
    """

    settings: DependencySettings
    applied: dict[str, tuple[float | None, float]] = field(default_factory=dict)
    not_applied: dict[str, str] = field(default_factory=dict)
    base: DependencySettings = field(default_factory=DependencySettings)

    @property
    def changes(self) -> bool:
        """Something would change."""
        return bool(self.applied)


def plan_apply(
    advice: Sequence[Advice], published: DependencySettings, requested: Sequence[str] = ()
) -> ApplyPlan:
    """The settings to publish for ``advice`` computed against the settings in force.

    Args:
        advice: :func:`~antifragile.learning.advise` against the settings in force (its
            ``current`` values are those settings).
        published: The settings of the version in force (``DependencySettings()``: none).
        requested: Advice settings to apply (names as :func:`setting_name` reads them);
            empty: every live-appliable advice that changes something.

    Returns:
        The plan. ``failure_threshold`` is rounded to the nearest integer; a value equal
        to the one in force is not a change.

    Raises:
        ValueError: a requested name is not a setting.
    """
    wanted = [setting_name(n) for n in requested]
    updates: dict[str, float | int] = {}
    applied: dict[str, tuple[float | None, float]] = {}
    not_applied: dict[str, str] = {}
    seen: set[str] = set()
    for item in advice:
        if wanted and item.setting not in wanted:
            continue
        seen.add(item.setting)
        if item.recommended is None:
            if wanted:
                not_applied[item.setting] = f"no recommended value: {item.reason}"
            continue
        if item.setting not in LIVE_SETTINGS:
            why = NOT_LIVE.get(item.setting, "not a setting of the running service")
            not_applied[item.setting] = f"not applied live: {why}"
            continue
        name = LIVE_SETTINGS[item.setting]
        value: float | int = item.recommended
        if name in _INTEGER_FIELDS:
            value = max(1, round(value))
        if item.current is not None and value == item.current:
            if wanted:
                not_applied[item.setting] = f"already {value:g}"
            continue
        updates[name] = value
        applied[item.setting] = (item.current, float(value))
    for name in wanted:
        if name not in seen:
            not_applied[name] = "no advice for it yet (not enough evidence)"
    settings = published.model_copy(update=updates)
    return ApplyPlan(settings=settings, applied=applied, not_applied=not_applied, base=published)


def _exact(value: float) -> Fraction:
    return Fraction(format(value, ".15g"))


def within_band(plan: ApplyPlan, band: AdaptationBand, observations: int) -> ApplyPlan:
    """The part of ``plan`` the ledger may apply by itself (policy ``adaptation.auto``).

    A change is in the band when its value in force is known and non-zero (with
    ``band.auto_known_only``: set by the version in force, not a library default) and
    ``|new - old| <= auto_max_step × old``, compared exactly on the decimals the floats
    stand for (15 significant digits), and, when the band has an ``auto_min_step``, the
    step is at least ``auto_min_step × old`` (advice wobbling by a few % between batches
    publishes nothing). Nothing is in the band when the advice rests on fewer than
    ``auto_min_observations`` held observations.

    Args:
        plan: From :func:`plan_apply`.
        band: The worker policy's ``adaptation`` band.
        observations: Held observations of the ledger.
    """
    if observations < band.auto_min_observations:
        why = (
            f"auto: {observations} observation(s), {band.auto_min_observations} needed; "
            "left to a person"
        )
        return ApplyPlan(
            settings=_without(plan, set(plan.applied)),
            not_applied={**plan.not_applied, **dict.fromkeys(plan.applied, why)},
            base=plan.base,
        )
    kept: dict[str, tuple[float | None, float]] = {}
    out: dict[str, str] = dict(plan.not_applied)
    for setting, (old, new) in plan.applied.items():
        if old is None or old == 0:
            out[setting] = "auto: no value in force to step from; left to a person"
            continue
        if band.auto_known_only and getattr(plan.base, LIVE_SETTINGS[setting]) is None:
            out[setting] = (
                "auto: not set by any version (the service runs with its own value, "
                "unknown here); left to a person"
            )
            continue
        step = abs(_exact(new) - _exact(old))
        if step > _exact(band.auto_max_step) * abs(_exact(old)):
            out[setting] = (
                f"auto: {old:g} -> {new:g} is a step of {float(step / abs(_exact(old))):.0%}, "
                f"over the band of {band.auto_max_step:.0%}; left to a person"
            )
            continue
        minimum = band.auto_min_step
        if minimum is not None and step < _exact(minimum) * abs(_exact(old)):
            out[setting] = (
                f"auto: {old:g} -> {new:g} is a step of {float(step / abs(_exact(old))):.0%}, "
                f"under the minimum of {minimum:.0%}; left as it is"
            )
            continue
        kept[setting] = (old, new)
    dropped = set(plan.applied) - set(kept)
    return ApplyPlan(
        settings=_without(plan, dropped), applied=kept, not_applied=out, base=plan.base
    )


def auto_paused(band: AdaptationBand, version: ConfigVersion | None) -> bool:
    """Whether ``auto`` waits: a person's revert is in force (``auto_pauses_on_revert``).

    A person undid a change (the ledger's own, or anyone's): redoing it at the next
    batch would overrule them. A person's next apply (a version that is not a revert)
    resumes ``auto``.
    """
    return (
        band.auto_pauses_on_revert
        and version is not None
        and version.revert_of is not None
        and version.by != AUTO_BY
    )


def _without(plan: ApplyPlan, settings: set[str]) -> DependencySettings:
    """``plan.settings`` with the values of ``settings`` back to those in force."""
    restore = {LIVE_SETTINGS[s]: getattr(plan.base, LIVE_SETTINGS[s]) for s in settings}
    return plan.settings.model_copy(update=restore)


def live_advice(advice: Sequence[Advice]) -> dict[str, float]:
    """Advice setting -> recommended value, for the live-appliable ones (auto's trigger)."""
    return {
        a.setting: a.recommended
        for a in advice
        if a.setting in LIVE_SETTINGS and a.recommended is not None
    }
