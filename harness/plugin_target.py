"""pytest plugin: the target's capabilities gate the tests, its known defects are strict xfails.

At collection, every test's needs (`@journey(..., needs=[...])`, `@pytest.mark.needs(...)`)
are checked against the session's target (harness.plugin.selected_target). A test needing
what the target lacks is not run and ends in its own category, "not applicable", with the
reason `not applicable to <target>: lacks <capability>[, <capability>]`: in the terminal
(its own word, letter and summary count), in JUnit (a skipped testcase with that message) and
in the HTML report (harness/report.py).

Each defect of targets/<name>/defects.toml becomes `xfail(strict=True)` on the test it names:
the run stays green while the defect stands and goes red the day it is fixed. A defect
registered for one step does not excuse a failure anywhere else.

A journey's `drills=[...]` must name drills of targets/<name>/drills.toml: a name no target
declares is a collection error (a typo must not leave a defect unguarded).

Needs harness.plugin (the target); harness.plugin_browser supplies the step log.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from _pytest._code.code import ReprFileLocation

from harness import report
from harness.capabilities import (
    NOT_APPLICABLE_ATTR,
    mark_not_applicable,
    not_applicable_reason,
    not_applicable_reason_of,
)
from harness.drills import DrillError, drill_owners, load_target_drills
from harness.journey import NEEDS_MARKER_HELP, JourneyMarkerError, journey_info, needs_of
from harness.plugin import selected_target
from harness.plugin_browser import EVIDENCE_KEY
from harness.results import REGISTERED_DEFECT_ATTR
from harness.steps import StepLog, current_step_log
from harness.target import Defect, Target, target_folders

CATEGORY = "not applicable"
NOT_APPLICABLE_KEY = pytest.StashKey[str]()  # item: why it is not applicable to this target
DEFECT_KEY = pytest.StashKey[Defect]()  # item: the registered defect it is expected to show
# (drill names of the session's target, every target's drill name -> its folder)
DRILLS_KEY = pytest.StashKey[tuple[tuple[str, ...], dict[str, str]]]()


def defects_file(target: Target) -> Path:
    """Where the target's defects are registered."""
    return target.folder / "defects.toml"


BROWSER_PARAMS = ("chromium", "firefox", "webkit")


def without_browser_param(nodeid: str) -> str:
    """The node id without pytest-playwright's browser parameter: `t[chromium-expired]` -> `t[expired]`."""
    if not nodeid.endswith("]") or "[" not in nodeid:
        return nodeid
    base, _, params = nodeid[:-1].partition("[")
    parts = [p for p in params.split("-") if p not in BROWSER_PARAMS]
    return f"{base}[{'-'.join(parts)}]" if parts else base


def defect_applies(defect: Defect, nodeid: str) -> bool:
    """A defect names one node id (its browser parameter may be left out); without a `[param]`
    it covers every parametrization."""
    if defect.test in (nodeid, without_browser_param(nodeid)):
        return True
    return "[" not in defect.test and nodeid.startswith(defect.test + "[")


# -- configuration ----------------------------------------------------------------------
@pytest.hookimpl(trylast=True)  # after harness.plugin has loaded the target
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", NEEDS_MARKER_HELP)
    target = selected_target(config)
    for defect in target.defects:
        test_file = config.rootpath / defect.test.split("::", 1)[0]
        if not test_file.is_file():
            raise pytest.UsageError(
                f"{defects_file(target)}: defect {defect.id}: test {defect.test!r} names {test_file}, "
                "which does not exist"
            )
    config.stash[report.TARGET_KEY] = target
    try:
        own = load_target_drills(target.folder)
        owners = drill_owners([*target_folders(), target.folder])
    except DrillError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[DRILLS_KEY] = (own.names() if own else (), owners)


def pytest_report_header(config: pytest.Config) -> str:
    target = selected_target(config)
    defects = f", {len(target.defects)} known defect(s)" if target.defects else ""
    return f"target: {target.title} ({len(target.capabilities)} capabilities{defects}; {target.folder})"


# -- collection: the gate and the defects ---------------------------------------------------
@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(
    collector: pytest.Collector, name: str, obj: object
) -> Generator[None, Any, Any]:
    result = yield
    items = result if isinstance(result, list) else [result] if result is not None else []
    for item in items:
        if isinstance(item, pytest.Function):
            try:
                needs_of(item)
                info = journey_info(item)
            except JourneyMarkerError as exc:
                # A typo in a capability must never turn a test off silently.
                raise collector.CollectError(f"{item.nodeid}: {exc}") from None
            if info is not None:
                _check_drills(collector, item, info.drills)
    return result


def _check_drills(collector: pytest.Collector, item: pytest.Function, names: tuple[str, ...]) -> None:
    """A drill name that no target declares is a collection error naming the active target's drills."""
    own, owners = collector.config.stash.get(DRILLS_KEY, ((), {}))
    unknown = [n for n in names if n not in own and n not in owners]
    if unknown:
        target = selected_target(collector.config)
        raise collector.CollectError(
            f"{item.nodeid}: invalid @pytest.mark.journey: unknown drill(s) {', '.join(map(repr, unknown))}; "
            f"drills of {target.name}: {', '.join(own) or 'none'} ({target.folder / 'drills.toml'})"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    target = selected_target(config)
    for item in items:
        try:
            lacking = target.lacking(needs_of(item))
        except JourneyMarkerError:
            continue  # already a collection error
        if lacking:
            item.stash[NOT_APPLICABLE_KEY] = not_applicable_reason(target.name, lacking)
        # The most specific registration wins: `test[case]` over `test`.
        matching = sorted(
            (d for d in target.defects if defect_applies(d, item.nodeid)), key=lambda d: len(d.test)
        )
        if matching:
            defect = matching[-1]
            item.add_marker(pytest.mark.xfail(strict=True, reason=defect.reason()))
            item.stash[DEFECT_KEY] = defect


@pytest.hookimpl(tryfirst=True)  # before any fixture, and before other skip/xfail marks are read
def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = item.stash.get(NOT_APPLICABLE_KEY, None)
    if reason is not None:
        raise pytest.skip.Exception(reason)


# -- reports ------------------------------------------------------------------------------
@pytest.hookimpl(wrapper=True)  # outside pytest's xfail handling, inside the browser plugin's evidence
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    rep: pytest.TestReport = yield
    reason = item.stash.get(NOT_APPLICABLE_KEY, None)
    if reason is not None and rep.when == "setup" and rep.skipped:
        mark_not_applicable(rep, _location(item), reason)
    defect = item.stash.get(DEFECT_KEY, None)
    if defect is not None:
        setattr(rep, REGISTERED_DEFECT_ATTR, defect.id)  # travels to the report (and xdist's controller)
    if defect is None or not_applicable_reason_of(rep) is not None:
        return rep
    target = selected_target(item.config)
    if rep.skipped and getattr(rep, "wasxfail", None) == defect.reason():
        mismatch = _not_the_defect(item, rep, defect)
        if mismatch is None:
            report.set_defect_status(rep, defect, "xfailed")
        else:
            _fail_with(rep, mismatch, defect)
            report.set_defect_status(rep, defect, "not the defect")
    elif rep.failed and rep.when == "call" and str(rep.longrepr).startswith("[XPASS(strict)]"):
        rep.longrepr = (
            f"[XPASS(strict)] defect {defect.id} seems fixed: remove it from {defects_file(target)} "
            f"({defect.reason()})"
        )
        report.set_defect_status(rep, defect, "fixed")
    return rep


def _location(item: pytest.Item) -> tuple[str, int]:
    return str(item.path), (item.location[1] or 0) + 1


def _step_log(item: pytest.Item) -> StepLog:
    evidence = item.stash.get(EVIDENCE_KEY, None)
    return evidence.step_log if evidence is not None else current_step_log()


def _not_the_defect(item: pytest.Item, rep: pytest.TestReport, defect: Defect) -> str | None:
    """Why this failure is not the registered defect, or None when it is."""
    if rep.when != "call":
        # A fixture that broke (the stack did not start) says nothing about the defect.
        return f"error in {rep.when}: known defect {defect.id} covers the test itself, not its {rep.when}"
    if defect.step is None:
        return None
    failed = _step_log(item).failed_step()
    if failed is None:
        return f"failed outside any step, but known defect {defect.id} is registered for step '{defect.step}'"
    if defect.step in failed.path:  # the step itself or one of its sub-steps
        return None
    return (
        f"failed at step '{failed.name}', but known defect {defect.id} is registered for step '{defect.step}'"
    )


def _fail_with(rep: pytest.TestReport, message: str, defect: Defect) -> None:
    """Undo pytest's xfail: an ordinary failure whose headline says why the defect does not cover it."""
    rep.outcome = "failed"
    del rep.wasxfail
    longrepr: Any = rep.longrepr
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and hasattr(longrepr, "addsection"):
        # The short summary and JUnit's <failure message> read reprcrash: lead with the mismatch.
        longrepr.reprcrash = ReprFileLocation(crash.path, crash.lineno, f"{message}: {crash.message}")
        longrepr.addsection(f"Not known defect {defect.id}", message)
    else:
        rep.longrepr = f"{message}\n{longrepr}"


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> tuple[str, str, Any] | None:
    if getattr(report, NOT_APPLICABLE_ATTR, None) is not None and not_applicable_reason_of(report):
        return CATEGORY, "n", ("NOT APPLICABLE", {"yellow": True})
    return None


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    target = selected_target(config)
    not_applicable = terminalreporter.stats.get(CATEGORY, [])
    if not_applicable:
        terminalreporter.write_sep("-", f"not applicable on {target.title}")
        for rep in not_applicable:
            terminalreporter.write_line(
                f"NOT APPLICABLE {rep.nodeid} - {not_applicable_reason_of(rep) or ''}"
            )
    if not target.defects:
        return
    statuses: dict[str, list[str]] = {}
    for reports in terminalreporter.stats.values():
        for rep in reports:
            status = report.defect_status_of(rep)
            if status is not None:
                text = report.DEFECT_RUN_TEXT.get(status[1], status[1])
                statuses.setdefault(status[0], []).append(f"{rep.nodeid}: {text}")
    terminalreporter.write_sep("-", f"known defects of {target.title}")
    for defect in target.defects:
        terminalreporter.write_line(f"{defect.id} {defect.summary}")
        for line in statuses.get(defect.id) or [f"{defect.test}: not run"]:
            terminalreporter.write_line(f"  {line}")
