"""What `throughline prove` found: each drill caught or not, by which journey and step; the matrix.

The data model is plain (JSON in, JSON out), so the HTML report (harness/report.py) renders a
run without importing the orchestration (harness/prove.py), and a run's JSON can be read back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# How a drill ended. Only CAUGHT proves anything; the others make `throughline prove` exit non-zero.
CAUGHT = "caught"
SURVIVED = "survived"
TOO_COARSE = "too coarse"
TIMED_OUT = "timed out"
UNGUARDED = "unguarded"  # no journey that applies to the target declares it
ERROR = "error"  # the run itself broke (pytest could not run the journeys)
NOT_RUN = "not run"  # the unpatched target failed first: nothing is claimed
# How a journey may end on the unpatched target: passed, stopped at the step of a registered defect
# (a strict xfail, targets/<name>/defects.toml), or not applicable there (at run time, a parameter).
BASELINE_EXPECTED = ("passed", "xfailed", "not applicable")
# One test function stands for all its parametrizations: by its most telling outcome. A failure
# outranks anything unexpected (skipped, an xfail of no registered defect, not run), which outranks
# a registered defect that still stands, a pass, and "not applicable" (one case of a target).
_EXPECTED_RANK = ("not applicable", "passed", "xfailed")


def merge_outcome(previous: str | None, outcome: str) -> str:
    """The outcome a test function shows after one more of its parametrizations ended `outcome`."""

    def rank(o: str) -> int:
        return 4 if o == "failed" else _EXPECTED_RANK.index(o) if o in _EXPECTED_RANK else 3

    return outcome if previous is None or rank(outcome) >= rank(previous) else previous


STATUSES = (CAUGHT, SURVIVED, TOO_COARSE, TIMED_OUT, UNGUARDED, ERROR, NOT_RUN)

# Matrix cells: what one journey did under one drill.
CELL_CAUGHT, CELL_PASSED, CELL_NOT_REACHED, CELL_UNDECLARED = "CAUGHT", "pass", "-", ""
CELL_XFAILED = "xf"  # declared, ran, stopped at its registered defect (strict xfail) without catching it
CELL_CONTROL = "ctl"  # the control journey (not declaring the drill) ran first and passed
CELL_CONTROL_FAILED = "ctl!"  # ... and failed: the drill is too coarse


@dataclass
class DrillResult:
    """One drill: how it ended, who caught it where, how long it took."""

    drill: str
    breaks: str
    status: str = NOT_RUN
    detail: str = ""  # why it is too coarse / survived / errored
    declared: list[str] = field(default_factory=list)  # test functions declaring it
    control: str | None = None  # the control journey run first (does not declare it)
    outcomes: dict[str, str] = field(default_factory=dict)  # test function -> passed/failed/...
    caught_by: str | None = None  # the test function that failed
    step: str | None = None  # its failing step ("step 3/7 'Log in'"), None: outside any step
    error: str | None = None  # "AssertionError: the UI says ..."
    seconds: float = 0.0
    log: str | None = None


@dataclass
class ProveRun:
    """A whole `throughline prove`: the unpatched baseline, every drill, the journeys' declarations."""

    target: str
    journeys: dict[str, str] = field(default_factory=dict)  # test function -> journey name (columns)
    baseline: dict[str, str] = field(default_factory=dict)  # test function -> outcome on the unpatched target
    baseline_seconds: float = 0.0
    results: list[DrillResult] = field(default_factory=list)
    undeclared: list[str] = field(default_factory=list)  # journey tests declaring no drill of the target
    wall_seconds: float = 0.0
    only: list[str] = field(default_factory=list)
    finished_at: str = ""  # UTC, ISO 8601: when the run ended (a report shows how old it is)

    @property
    def baseline_ok(self) -> bool:
        """The unpatched target did what the journeys expect: passed, or stopped at a registered defect."""
        return bool(self.baseline) and all(o in BASELINE_EXPECTED for o in self.baseline.values())

    @property
    def caught(self) -> list[DrillResult]:
        return [r for r in self.results if r.status == CAUGHT]

    @property
    def ok(self) -> bool:
        """Exit 0: the baseline passed, every drill was caught, every journey declares a drill."""
        return self.baseline_ok and not self.undeclared and all(r.status == CAUGHT for r in self.results)

    def verdict(self) -> str:
        if not self.baseline_ok:
            failed = [f for f, o in self.baseline.items() if o not in BASELINE_EXPECTED]
            return (
                "nothing is claimed: the unpatched target does not pass the journeys that declare drills "
                f"({', '.join(failed) or 'none ran'})"
            )
        counts = {s: sum(1 for r in self.results if r.status == s) for s in STATUSES}
        text = f"{counts[CAUGHT]}/{len(self.results)} drills caught by a journey declaring them"
        others = [f"{counts[s]} {s}" for s in STATUSES if s != CAUGHT and counts[s]]
        if others:
            text += "; " + ", ".join(others)
        if self.undeclared:
            text += f"; {len(self.undeclared)} journey test(s) declare no drill"
        return text

    def journey_names(self) -> list[str]:
        """Matrix columns: journey names in collection order."""
        return list(dict.fromkeys(self.journeys.values()))

    def cells(self, result: DrillResult) -> dict[str, str]:
        """Journey name -> matrix cell for one drill."""
        cells = {name: CELL_UNDECLARED for name in self.journey_names()}
        control = self.journeys.get(result.control or "")
        control_outcome = result.outcomes.get(result.control or "")
        if control is not None and control_outcome in ("passed", "failed"):
            cells[control] = CELL_CONTROL if control_outcome == "passed" else CELL_CONTROL_FAILED
        for function in result.declared:
            name = self.journeys.get(function)
            if name is None:
                continue
            outcome = result.outcomes.get(function)
            cell = (
                CELL_CAUGHT
                if function == result.caught_by
                else CELL_PASSED
                if outcome == "passed"
                else CELL_XFAILED
                if outcome == "xfailed"
                else CELL_NOT_REACHED
            )
            rank = (
                CELL_UNDECLARED,
                CELL_CONTROL,
                CELL_CONTROL_FAILED,
                CELL_NOT_REACHED,
                CELL_XFAILED,
                CELL_PASSED,
                CELL_CAUGHT,
            )
            if rank.index(cell) > rank.index(cells[name]):
                cells[name] = cell
        return cells

    # -- JSON ----------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ProveRun:
        fields = dict(data)
        results = [DrillResult(**r) for r in fields.pop("results", [])]
        return cls(results=results, **fields)

    @classmethod
    def load(cls, path: Path) -> ProveRun:
        return cls.from_mapping(json.loads(path.read_text()))


def render_matrix(run: ProveRun) -> str:
    """The drill x journey matrix as text: one row per drill, one column per journey (J1..Jn, legend below)."""
    names = run.journey_names()
    columns = [f"J{i}" for i in range(1, len(names) + 1)]
    drill_width = max([len("drill"), *(len(r.drill) for r in run.results)])
    width = max([len(CELL_CAUGHT), *(len(c) for c in columns)])
    header = f"{'drill':<{drill_width}}  " + " ".join(f"{c:^{width}}" for c in columns) + "  result"
    lines = [header, "-" * len(header)]
    for result in run.results:
        cells = run.cells(result)
        row = " ".join(f"{cells[n]:^{width}}" for n in names)
        outcome = result.status
        if result.status == CAUGHT:
            outcome += f" at {result.step or 'no step (outside any step)'}"
        elif result.detail:
            outcome += f": {result.detail}"
        lines.append(f"{result.drill:<{drill_width}}  {row}  {outcome} ({result.seconds:.0f} s)")
    lines.append("")
    lines += [f"  {c} = {n}" for c, n in zip(columns, names, strict=True)]
    lines.append(
        f"  {CELL_CAUGHT}: its test failed first; {CELL_PASSED}: declared and passed; "
        f"{CELL_XFAILED}: declared, stopped at its registered defect before catching it; "
        f"{CELL_NOT_REACHED!r}: declared, not reached (stopped at the first failure); "
        f"{CELL_CONTROL}: the control (not declaring it) ran first and passed ({CELL_CONTROL_FAILED}: "
        "and failed: too coarse); blank: not declared"
    )
    return "\n".join(lines)
