"""The `journey` marker: what a journey is called, how much it matters, what it crosses.

    @pytest.mark.journey(name="Signup, login, chat", priority="P0", mrr=100_000,
                         components=["auth", "backend", "frontend", "websocket"],
                         needs=["password_signup", "streaming"],
                         drills=["signup-announces-no-name"])

`journey(...)` builds the same marker and validates it at import time; the browser plugin
validates every marker at collection, so a typo is a collection error, never a silent gap
in the release summary. `needs` names capabilities (harness/capabilities.py) the target must
have; a plain test says the same with `@pytest.mark.needs("oauth", ...)`. A target lacking one
reports the test "not applicable" (harness/plugin_target.py). `drills` names the defect drills
(targets/<name>/drills.toml, harness/drills.py) the journey must catch: `throughline prove`
patches each one into a scratch copy of the platform and runs the journeys declaring it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from harness.capabilities import CAPABILITIES

PRIORITIES = ("P0", "P1")
COMPONENTS = frozenset(
    {
        "auth",
        "backend",
        "frontend",
        "websocket",
        "agent",
        "postgres",
        "clickhouse",
        "redis",
        "oauth",
        "llm",
        "email",
    }
)
DRILL_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
MARKER_HELP = (
    "journey(name, priority, mrr, components, needs, drills): a critical user journey with its priority "
    "(P0/P1), the revenue it protects, the components it crosses, the capabilities it needs and the "
    "defect drills it must catch"
)
NEEDS_MARKER_HELP = (
    "needs(*capabilities): the capabilities (harness/capabilities.py) the target must have; "
    "otherwise the test is not applicable"
)


class JourneyMarkerError(ValueError):
    """A `journey` marker with a missing or unknown value."""


@dataclass(frozen=True)
class JourneyInfo:
    """A validated journey marker."""

    name: str
    priority: str
    mrr: int
    components: tuple[str, ...]
    needs: tuple[str, ...] = ()
    drills: tuple[str, ...] = ()  # defect drills (targets/<name>/drills.toml) this journey must catch


def validate_journey(
    name: Any = None,
    priority: Any = None,
    mrr: Any = 0,
    components: Any = None,
    needs: Any = (),
    drills: Any = (),
    **unknown: Any,
) -> JourneyInfo:
    """Check the marker's values; raise JourneyMarkerError naming every problem and the vocabulary."""
    problems = []
    if unknown:
        problems.append(
            f"unknown argument(s) {sorted(unknown)}; expected name, priority, mrr, components, needs, drills"
        )
    if not isinstance(name, str) or not name.strip():
        problems.append("name must be a non-empty string, e.g. name='Signup, login, chat'")
    if priority not in PRIORITIES:
        problems.append(f"unknown priority {priority!r}; use one of {', '.join(PRIORITIES)}")
    if isinstance(mrr, bool) or not isinstance(mrr, int) or mrr < 0:
        problems.append(f"mrr must be a non-negative int (monthly revenue protected, USD), got {mrr!r}")
    if isinstance(components, str) or not isinstance(components, Iterable):
        problems.append("components must be a list, e.g. components=['auth', 'frontend']")
        comps: tuple[str, ...] = ()
    else:
        comps = tuple(components)
        unknown_comps = [c for c in comps if c not in COMPONENTS]
        if unknown_comps:
            problems.append(
                f"unknown component(s) {', '.join(map(repr, unknown_comps))}; "
                f"known components: {', '.join(sorted(COMPONENTS))}"
            )
        if not comps:
            problems.append("components must name at least one component")
    caps: tuple[str, ...] = ()
    if isinstance(needs, str) or not isinstance(needs, Iterable):
        problems.append("needs must be a list of capabilities, e.g. needs=['oauth']")
    else:
        caps = tuple(needs)
        unknown_caps = [c for c in caps if c not in CAPABILITIES]
        if unknown_caps:
            problems.append(
                f"unknown capability {', '.join(map(repr, unknown_caps))}; "
                f"known capabilities: {', '.join(sorted(CAPABILITIES))}"
            )
    drill_names: tuple[str, ...] = ()
    if isinstance(drills, str) or not isinstance(drills, Iterable):
        problems.append("drills must be a list of drill names, e.g. drills=['ws-accepts-revoked-session']")
    else:
        drill_names = tuple(drills)
        bad = [d for d in drill_names if not isinstance(d, str) or not DRILL_NAME.match(d)]
        if bad:
            problems.append(
                f"drill name(s) {', '.join(map(repr, bad))} must be lower-case letters, digits and '-'"
            )
        twice = sorted({d for d in drill_names if drill_names.count(d) > 1}, key=str)
        if twice:
            problems.append(f"drill(s) {', '.join(map(repr, twice))} listed twice")
    if problems:
        raise JourneyMarkerError("invalid @pytest.mark.journey: " + "; ".join(problems))
    return JourneyInfo(
        name=name.strip(), priority=priority, mrr=mrr, components=comps, needs=caps, drills=drill_names
    )


def journey(
    name: str,
    priority: str,
    mrr: int = 0,
    components: Iterable[str] = (),
    needs: Iterable[str] = (),
    drills: Iterable[str] = (),
) -> pytest.MarkDecorator:
    """`@journey(...)`: the `journey` marker, validated when the module is imported."""
    info = validate_journey(
        name=name,
        priority=priority,
        mrr=mrr,
        components=list(components),
        needs=list(needs),
        drills=drills if isinstance(drills, str) else list(drills),
    )
    return pytest.mark.journey(
        name=info.name,
        priority=info.priority,
        mrr=info.mrr,
        components=list(info.components),
        needs=list(info.needs),
        drills=list(info.drills),
    )


def journey_info(item: pytest.Item) -> JourneyInfo | None:
    """The validated journey marker of a test item, or None for a plain test."""
    mark = item.get_closest_marker("journey")
    if mark is None:
        return None
    if mark.args:
        raise JourneyMarkerError("invalid @pytest.mark.journey: use keyword arguments only")
    return validate_journey(**mark.kwargs)


def needs_of(item: pytest.Item) -> tuple[str, ...]:
    """Every capability a test needs: its journey's `needs` and every `needs` marker, validated."""
    info = journey_info(item)
    needed = list(info.needs if info is not None else ())
    for mark in item.iter_markers("needs"):
        names = mark.args
        if mark.kwargs or not names or not all(isinstance(n, str) for n in names):
            raise JourneyMarkerError(
                "invalid @pytest.mark.needs: name capabilities as string arguments, e.g. needs('oauth', 'billing')"
            )
        unknown = [n for n in names if n not in CAPABILITIES]
        if unknown:
            raise JourneyMarkerError(
                f"invalid @pytest.mark.needs: unknown capability {', '.join(map(repr, unknown))}; "
                f"known capabilities: {', '.join(sorted(CAPABILITIES))}"
            )
        needed += names
    return tuple(dict.fromkeys(needed))
