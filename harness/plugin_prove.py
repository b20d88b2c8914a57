"""pytest plugin for `throughline prove` (harness/prove.py): what it collected and how each test ended.

Loaded only by prove's own pytest runs (`-p harness.plugin_prove`):

    --prove-collect PATH   write every collected test: node id, journey, drills, not-applicable reason
    --prove-out PATH       write every test's outcome, the step that failed, the error's type and line

Both files are JSON; nothing else changes in the run.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from harness.capabilities import not_applicable_reason_of
from harness.journey import JourneyMarkerError, journey_info
from harness.plugin_browser import EVIDENCE_KEY
from harness.plugin_target import NOT_APPLICABLE_KEY
from harness.process import ServiceStartError
from harness.redact import redact
from harness.report import defect_status_of

PLATFORM_START_ERRORS = (ServiceStartError,)


def function_id(nodeid: str) -> str:
    """The test function a node id belongs to: `f.py::test_x[chromium-case]` -> `f.py::test_x`."""
    return nodeid.split("[", 1)[0]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("throughline-prove", "throughline prove (internal)")
    group.addoption("--prove-collect", default=None, help="write the collected journeys as JSON here")
    group.addoption("--prove-out", default=None, help="write each test's outcome as JSON here")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(ProveRecorder(config), "throughline-prove-recorder")


XFAILED = "xfailed"  # stopped at the step of a registered defect (a strict xfail): expected


def _skipped_outcome(report: pytest.TestReport) -> str:
    """A skipped report: "xfailed" only when it is a registered defect that still stands."""
    if not hasattr(report, "wasxfail"):
        return "skipped"
    status = defect_status_of(report)
    return XFAILED if status is not None and status[1] == XFAILED else "xfailed (no registered defect)"


class ProveRecorder:
    """Collects what prove needs and writes it at the end of the session."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.collected: list[dict[str, Any]] = []
        self.results: dict[str, dict[str, Any]] = {}

    @pytest.hookimpl(trylast=True)  # after the target plugin marked what is not applicable
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            try:
                info = journey_info(item)
            except JourneyMarkerError:
                info = None
            self.collected.append(
                {
                    "nodeid": item.nodeid,
                    "function": function_id(item.nodeid),
                    "journey": info.name if info else None,
                    "drills": list(info.drills) if info else [],
                    "not_applicable": item.stash.get(NOT_APPLICABLE_KEY, None),
                }
            )

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, None]:
        yield
        if call.excinfo is None:
            return
        entry = self._entry(item.nodeid)
        if entry.get("phase"):
            return  # the first failing phase is the one that counts
        evidence = item.stash.get(EVIDENCE_KEY, None)
        failed = evidence.step_log.failed_step() if evidence is not None else None
        message = (str(call.excinfo.value).strip().splitlines() or [""])[0][:300]
        entry.update(
            phase=call.when,
            step=evidence.step_log.label(failed) if evidence is not None and failed is not None else None,
            error_type=call.excinfo.typename,
            message=redact(message),
            platform_start=isinstance(call.excinfo.value, PLATFORM_START_ERRORS),
        )

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = self._entry(report.nodeid)
        entry["duration"] = round(entry.get("duration", 0.0) + report.duration, 3)
        if not_applicable_reason_of(report) is not None:
            entry["outcome"] = "not applicable"
        elif report.failed:
            entry["outcome"] = "failed"
        elif report.skipped and entry.get("outcome") != "failed":
            entry["outcome"] = _skipped_outcome(report)
            if entry["outcome"] == XFAILED:
                entry["defect"] = (defect_status_of(report) or ("", ""))[0]
        elif report.when == "call" and "outcome" not in entry:
            entry["outcome"] = "passed"

    def _entry(self, nodeid: str) -> dict[str, Any]:
        return self.results.setdefault(nodeid, {"nodeid": nodeid, "function": function_id(nodeid)})

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        collect = self.config.getoption("--prove-collect")
        if collect:
            Path(collect).write_text(json.dumps(self.collected, indent=1))
        out = self.config.getoption("--prove-out")
        if out:
            Path(out).write_text(json.dumps(list(self.results.values()), indent=1))
