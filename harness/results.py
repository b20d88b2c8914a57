"""Machine-readable results of one run: every test's verdict, journey, steps, probes and artifacts.

One `RunResults` is built from the test reports as they arrive (harness/report.py's ReportPlugin;
under pytest-xdist the reports of every worker reach the controller, with what only the worker
knew attached to them, see `REPORT_ATTRS`). It is written as `results.json` next to the run's
JUnit and HTML report. `throughline report merge` reads the results of many workers or shards,
checks they belong together (one target, one commit, each test run once) and builds one
`RunResults` again, so the release summary of a merged run is computed by the same code as a
single run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pytest

from harness.capabilities import not_applicable_reason_of
from harness.redact import redact_value

RESULTS_FORMAT = "throughline-results/1"
RESULTS_FILE = "results.json"

PASSED, FAILED, NOT_APPLICABLE, KNOWN_DEFECT, SKIPPED = (
    "passed",
    "failed",
    "not applicable",
    "known defect",
    "skipped",
)
OUTCOMES = (PASSED, FAILED, NOT_APPLICABLE, KNOWN_DEFECT, SKIPPED)
_RANK = {FAILED: 0, NOT_APPLICABLE: 1, KNOWN_DEFECT: 2, SKIPPED: 3, PASSED: 4}  # a test's worst phase wins

# What the worker attaches to a test report for whoever renders it (pytest-xdist ships every
# JSON-able attribute of a report from worker to controller).
JOURNEY_ATTR = "throughline_journey"  # {name, priority, mrr, components}
REGISTERED_DEFECT_ATTR = "throughline_registered_defect"  # the defect id registered for the test
STEPS_ATTR = "throughline_steps"  # [{number, name, depth, status, duration, note}]
PROBES_ATTR = "throughline_probes"  # [{label, query, value}] (redacted, shortened)
ENVIRONMENT_ATTR = "throughline_environment"  # the stack's environment (components, run dir)
WORKER_ATTR = "throughline_worker"  # gw0, gw1 ... (pytest-xdist), absent when serial
DEFECT_STATUS_ATTR = "throughline_defect"  # (defect id, "xfailed" | "fixed" | "not the defect")
ARTIFACT_PROPERTIES = ("playwright_trace", "playwright_screenshot", "playwright_video")


class ResultsError(ValueError):
    """Results that cannot be read or do not belong together; the message is one line for the user."""


@dataclass
class TestRecord:
    """One test of the run: its final verdict and the evidence a report shows for it."""

    nodeid: str
    outcome: str = PASSED
    duration: float = 0.0  # setup + call + teardown
    call_duration: float = 0.0  # the test body alone (what shards are balanced by)
    setup_duration: float = 0.0  # the first test of a worker's also starts its stack and browser
    journey: dict[str, Any] | None = None
    reason: str | None = None  # why it is not applicable
    defect: list[str] | None = None  # [defect id, how it showed]
    registered_defect: str | None = None
    message: str | None = None  # the failure's one-line headline
    longrepr: str | None = None
    sections: list[list[str]] = field(default_factory=list)  # [[title, text]] of the failure evidence
    steps: list[dict[str, Any]] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[list[str]] = field(default_factory=list)  # [[kind, path]]
    worker: str | None = None
    shard: str | None = None

    def update(self, report: pytest.TestReport) -> None:
        """Fold one phase's report (setup, call, teardown) into the record."""
        self.duration += report.duration
        if report.when == "call":
            self.call_duration = report.duration
        elif report.when == "setup":
            self.setup_duration = report.duration
        value = getattr(report, DEFECT_STATUS_ATTR, None)
        if isinstance(value, tuple | list) and len(value) == 2:
            self.defect = [str(value[0]), str(value[1])]
        for attr, name in (
            (JOURNEY_ATTR, "journey"),
            (REGISTERED_DEFECT_ATTR, "registered_defect"),
            (WORKER_ATTR, "worker"),
        ):
            seen = getattr(report, attr, None)
            if seen is not None:
                setattr(self, name, seen)
        for attr, name in ((STEPS_ATTR, "steps"), (PROBES_ATTR, "probes")):
            seen = getattr(report, attr, None)
            if seen:
                setattr(self, name, list(seen))
        for key, path in report.user_properties:
            if key in ARTIFACT_PROPERTIES and [key, str(path)] not in self.artifacts:
                self.artifacts.append([key, str(path)])
        reason = not_applicable_reason_of(report)
        if report.failed:
            seen_outcome = FAILED
            if self.longrepr is None:
                # kept as reported: every way out of a record redacts (write() all of it, the job
                # summary and the notification their own text, the merged report.html via esc())
                self.longrepr = str(report.longrepr)
                crash = getattr(report.longrepr, "reprcrash", None)
                self.message = (
                    str(crash.message) if crash is not None else (self.longrepr.splitlines() or [""])[0]
                )
                self.sections = [[t, s] for t, s in report.sections]
        elif reason is not None:
            seen_outcome, self.reason = NOT_APPLICABLE, reason
        elif report.skipped:
            seen_outcome = KNOWN_DEFECT if self.defect and self.defect[1] == "xfailed" else SKIPPED
        else:
            seen_outcome = PASSED
        if _RANK[seen_outcome] < _RANK[self.outcome]:
            self.outcome = seen_outcome

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TestRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class RunResults:
    """Everything a release report needs of one run (or of many, merged)."""

    target: str
    target_title: str = ""
    commit: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None
    shard: str | None = None  # "1/2" when this run is one shard of a suite
    workers: int = 0  # pytest-xdist workers (0: serial)
    environment: dict[str, Any] = field(default_factory=dict)
    worker_environments: dict[str, dict[str, Any]] = field(default_factory=dict)
    tests: dict[str, TestRecord] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)  # the result files a merged run came from
    # --platform-coverage: per service and in total (harness/platform_coverage.py summarize()); None: not measured
    platform_coverage: dict[str, Any] | None = None
    format: str = RESULTS_FORMAT

    @property
    def wall_seconds(self) -> float:
        return (self.finished or time.time()) - self.started

    def record(self, report: pytest.TestReport) -> TestRecord:
        """The record of the report's test, updated with this phase."""
        rec = self.tests.setdefault(report.nodeid, TestRecord(report.nodeid, shard=self.shard))
        rec.update(report)
        env = getattr(report, ENVIRONMENT_ATTR, None)
        if isinstance(env, dict):
            self.worker_environments[rec.worker or "main"] = env
        return rec

    def merged_environment(self) -> dict[str, Any]:
        """The environment rows of the report: the components once, each worker's run dir."""
        env = dict(self.environment)
        for worker, seen in sorted(self.worker_environments.items()):
            for key, value in seen.items():
                if key == "run_dir" and (len(self.worker_environments) > 1 or worker != "main"):
                    env[f"run_dir ({worker})"] = value
                else:
                    env.setdefault(key, value)
        return env

    def counts(self) -> dict[str, int]:
        seen = [t.outcome for t in self.tests.values()]
        return {k: seen.count(k) for k in OUTCOMES}

    # -- files ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tests"] = [asdict(t) for t in self.tests.values()]
        return data

    def write(self, path: Path) -> Path:
        """Write atomically: a reader never sees half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(redact_value(self.to_dict()), indent=1, default=str))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> RunResults:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ResultsError(f"{path}: no such results file") from None
        except (OSError, ValueError) as exc:
            raise ResultsError(f"{path}: not a results file ({type(exc).__name__}: {exc})") from None
        if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
            raise ResultsError(f"{path}: not a {RESULTS_FORMAT} file")
        try:
            tests = [TestRecord.from_dict(t) for t in data.pop("tests")]
            known = {f.name for f in fields(cls)}
            run = cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, KeyError) as exc:
            raise ResultsError(f"{path}: malformed results ({exc})") from None
        run.tests = {t.nodeid: t for t in tests}
        return run


def find_results(paths: Iterable[Path]) -> list[Path]:
    """The results files named, or found in the folders named (a run folder, or one holding many)."""
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            direct = path / RESULTS_FILE
            nested = sorted(p for p in path.rglob(RESULTS_FILE) if p.resolve() != direct.resolve())
            found.extend([direct] if direct.is_file() else nested)
            if not direct.is_file() and not nested:
                raise ResultsError(f"{path}: no {RESULTS_FILE} in it")
        else:
            raise ResultsError(f"{path}: no such file or folder")
    return list(dict.fromkeys(p.resolve() for p in found))


def merge(runs: list[tuple[Path, RunResults]]) -> RunResults:
    """One run of many: they must share the target and commit, and no test may have run twice."""
    if not runs:
        raise ResultsError("nothing to merge")
    first_path, first = runs[0]
    for path, run in runs[1:]:
        if run.target != first.target:
            raise ResultsError(
                f"cannot merge results of different targets: {first_path} ran {first.target!r}, "
                f"{path} ran {run.target!r}"
            )
        if run.commit != first.commit:
            raise ResultsError(
                f"cannot merge results of different commits: {first_path} ran {first.commit or 'unknown'}, "
                f"{path} ran {run.commit or 'unknown'}"
            )
    merged = RunResults(
        target=first.target,
        target_title=first.target_title,
        commit=first.commit,
        started=min(r.started for _, r in runs),
        finished=max((r.finished or r.started) for _, r in runs),
        workers=max(r.workers for _, r in runs),
        environment={k: v for k, v in first.environment.items() if k != "run_dir"},  # each run's: below
        sources=[str(p) for p, _ in runs],
    )
    where: dict[str, Path] = {}
    for path, run in runs:
        label = run.shard or path.parent.name
        for key, env in run.worker_environments.items():
            merged.worker_environments[f"{label} {key}"] = env
        for nodeid, rec in run.tests.items():
            if nodeid in merged.tests:
                raise ResultsError(f"test {nodeid} ran twice: in {where[nodeid]} and in {path}")
            where[nodeid] = path
            rec.shard = rec.shard or run.shard
            merged.tests[nodeid] = rec
    shards = sorted({r.shard for _, r in runs if r.shard})
    merged.shard = ",".join(shards) or None
    return merged


def durations_of(runs: Iterable[RunResults]) -> dict[str, float]:
    """{node id: seconds of the test body} for `--shard`'s balance (pytest-split's durations file).

    The body alone: a test's setup also starts the session's stack and browser when it runs
    first on its worker, a cost every shard pays once, not a property of that test.
    """
    out: dict[str, float] = {}
    for run in runs:
        for nodeid, rec in run.tests.items():
            if rec.outcome in (PASSED, FAILED, KNOWN_DEFECT):
                out[nodeid] = max(round(rec.call_duration, 3), 0.01)  # 0 would pile every test on shard 1
    return dict(sorted(out.items()))


def git_commit(root: Path) -> str:
    """The checkout's commit (with `+dirty` when it has changes); '' outside git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""
