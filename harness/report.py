"""pytest-html enrichment: a release summary on top, journey columns, steps, failure evidence.

The stack fixture hands the report what only it knows:

    from harness import report
    report.register_log_tail_provider(lambda: stack.log_tails(40))      # {service: last lines}
    report.register_environment_provider(lambda: {
        "mode": "local",
        "components": {"postgres": "real", "llm": "stand-in: OpenAI-compatible", ...},
        "run_dir": "...",
    })

The target plugin (harness/plugin_target.py) hands it the session's target and the defects it
registered as xfails (TARGET_KEY; each report names its registered defect); a report says per test whether it was not
applicable (harness.capabilities.not_applicable_reason_of) or showed a registered defect
(defect_status_of).

Every text this module puts into a report goes through `harness.redact.redact`.
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.capabilities import not_applicable_reason_of
from harness.detection import CAUGHT, ProveRun
from harness.journey import COMPONENTS, PRIORITIES, JourneyInfo
from harness.redact import redact, redact_value
from harness.results import (
    DEFECT_STATUS_ATTR,
    FAILED,
    JOURNEY_ATTR,
    KNOWN_DEFECT,
    NOT_APPLICABLE,
    OUTCOMES,
    PASSED,
    SKIPPED,
    RunResults,
)
from harness.target import Defect, Target

LogTailProvider = Callable[[], dict[str, str]]
EnvironmentProvider = Callable[[], dict[str, Any]]

_log_tail_providers: list[LogTailProvider] = []
_environment_providers: list[EnvironmentProvider] = []
_environment_snapshot: dict[str, Any] = {}

JOURNEYS_KEY = pytest.StashKey[dict[str, JourneyInfo]]()
TARGET_KEY = pytest.StashKey[Target]()  # the platform under test

# How a registered defect showed in one test report (DEFECT_STATUS_ATTR): (defect id, status),
# where status is "xfailed" (it still stands), "fixed" (XPASS strict) or "not the defect".
DefectStatus = tuple[str, str]
DEFECT_RUN_TEXT = {
    "xfailed": "still stands (xfailed)",
    "fixed": "fixed (XPASS): remove it from defects.toml",
    "not the defect": "not shown: the test failed elsewhere",
}

LOG_TAIL_LINES = 40


def _unregister(registry: list[Any], fn: Any) -> Callable[[], None]:
    def unregister() -> None:
        if fn in registry:
            registry.remove(fn)

    return unregister


def register_log_tail_provider(fn: LogTailProvider) -> Callable[[], None]:
    """Register fn() -> {service name: last log lines}; called when a test fails. Returns an unregister."""
    _log_tail_providers.append(fn)
    return _unregister(_log_tail_providers, fn)


def register_environment_provider(fn: EnvironmentProvider) -> Callable[[], None]:
    """Register fn() -> dict for the summary: "components" {name: "real" | "stand-in: ..."} plus any rows.

    Called now (snapshot, because session fixtures are gone when the summary is written) and
    again after every test while registered. Returns an unregister callable.
    """
    _environment_providers.append(fn)
    _refresh_environment()
    return _unregister(_environment_providers, fn)


def _refresh_environment() -> None:
    for fn in list(_environment_providers):
        try:
            _environment_snapshot.update(fn() or {})
        except Exception as exc:  # noqa: BLE001 - the report must not fail because a provider did
            _environment_snapshot[f"provider error ({getattr(fn, '__name__', 'provider')})"] = repr(exc)


def environment_snapshot() -> dict[str, Any]:
    """The registered providers' environment, as of now (a copy)."""
    _refresh_environment()
    return dict(_environment_snapshot)


def collect_log_tails(lines: int = LOG_TAIL_LINES) -> dict[str, str]:
    """The registered services' last log lines, redacted; a failing provider reports its error."""
    tails: dict[str, str] = {}
    for fn in list(_log_tail_providers):
        try:
            for name, text in (fn() or {}).items():
                tails[name] = redact("\n".join(str(text).splitlines()[-lines:]))
        except Exception as exc:  # noqa: BLE001
            tails[f"provider {getattr(fn, '__name__', 'provider')}"] = f"<log tail provider failed: {exc!r}>"
    return tails


@dataclass(frozen=True)
class TrailEntry:
    """One question a journey asked a store, and the answer."""

    label: str
    query: str
    value: Any


class DataTrail(list):  # type: ignore[type-arg]
    """What the journey asked the stores and got back: append((label, query, value)) or add(...)."""

    def add(self, label: str, query: str, value: Any) -> None:
        self.append((label, query, value))

    def entries(self) -> list[TrailEntry]:
        out = []
        for item in self:
            if isinstance(item, TrailEntry):
                out.append(item)
            elif isinstance(item, tuple | list) and len(item) == 3:
                out.append(TrailEntry(str(item[0]), str(item[1]), item[2]))
            else:
                out.append(TrailEntry(getattr(item, "label", "?"), getattr(item, "query", ""), item))
        return out

    def format(self) -> str:
        rows = [
            f"- {e.label}\n    query: {e.query}\n    value: {_value_text(e.value)[:2000]}"
            for e in self.entries()
        ]
        return redact("\n".join(rows)) if rows else "(no probe results recorded)"

    def as_dicts(self, limit: int = 500) -> list[dict[str, Any]]:
        """The entries, redacted and shortened, for results.json."""
        return [
            {"label": e.label, "query": redact(e.query), "value": redact(_value_text(e.value)[:limit])}
            for e in self.entries()
        ]


def _value_text(value: Any) -> str:
    """A probe's answer as JSON (secrets redacted), or its repr when it is not JSON-able."""
    try:
        return json.dumps(redact_value(value), default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


_current_trail: DataTrail | None = None


def set_current_trail(trail: DataTrail | None) -> None:
    global _current_trail
    _current_trail = trail


def record_data(label: str, query: str, value: Any) -> None:
    """Append to the running test's data trail (for helpers that get no fixtures)."""
    if _current_trail is not None:
        _current_trail.add(label, query, value)


def set_defect_status(report: Any, defect: Defect, status: str) -> None:
    """Record on a test report how the registered `defect` showed in it."""
    setattr(report, DEFECT_STATUS_ATTR, (defect.id, status))


def defect_status_of(report: Any) -> DefectStatus | None:
    """(defect id, status) when a registered defect was expected in this report, else None."""
    value = getattr(report, DEFECT_STATUS_ATTR, None)
    return (str(value[0]), str(value[1])) if isinstance(value, tuple | list) and len(value) == 2 else None


# -- rendering helpers -------------------------------------------------------------
def esc(text: Any) -> str:
    return html.escape(redact(str(text)))


def text_block(title: str, text: str) -> str:
    return (
        f'<details class="tl-section" open><summary><b>{esc(title)}</b></summary>'
        f'<pre style="white-space:pre-wrap">{esc(text)}</pre></details>'
    )


def money(value: int) -> str:
    return f"${value:,}"


# -- the pytest-html side -------------------------------------------------------------
_ORDER = {FAILED: 0, KNOWN_DEFECT: 1, SKIPPED: 2, NOT_APPLICABLE: 3, PASSED: 4}  # summary rows: worst first
_SUMMARY_CSS = (
    "<style>.tl-table{border-collapse:collapse;margin:8px 0 14px}"
    ".tl-table th,.tl-table td{border:1px solid #d0d7de;padding:4px 10px;text-align:left}"
    ".tl-table th{background:#f6f8fa}.tl-verdict{padding:8px 12px;border-radius:6px;font-size:15px}"
    ".tl-green{background:#dafbe1}.tl-amber{background:#fff8c5}.tl-red{background:#ffebe9}"
    "tr.tl-failed td{background:#ffebe9}tr.tl-skipped td{background:#fff8c5}"
    "tr.tl-known-defect td{background:#fbefff}tr.tl-not-applicable td{color:#57606a}</style>"
)


@dataclass
class JourneyResult:
    """One journey (all tests carrying its name) for the release summary."""

    name: str
    priority: str
    mrr: int
    components: set[str] = field(default_factory=set)
    tests: dict[str, str] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        """Failed if any test failed; else showing a known defect; else passed if any passed."""
        outcomes = set(self.tests.values())
        for outcome in (FAILED, KNOWN_DEFECT, PASSED, NOT_APPLICABLE):
            if outcome in outcomes:
                return outcome
        return SKIPPED


def _counts(outcomes: Iterable[str]) -> dict[str, int]:
    seen = list(outcomes)
    return {k: seen.count(k) for k in OUTCOMES}


def _tally(counts: dict[str, int]) -> str:
    return (
        f"{counts[PASSED]} passed, {counts[FAILED]} failed, {counts[NOT_APPLICABLE]} not applicable, "
        f"{counts[KNOWN_DEFECT]} known defect{'' if counts[KNOWN_DEFECT] == 1 else 's'}, "
        f"{counts[SKIPPED]} skipped"
    )


def journey_info_dict(info: JourneyInfo) -> dict[str, Any]:
    """What a test report carries of its journey marker (to the xdist controller, into results.json)."""
    return {
        "name": info.name,
        "priority": info.priority,
        "mrr": info.mrr,
        "components": list(info.components),
    }


@dataclass(eq=False)  # registered as a pluggy plugin: must stay hashable
class ReportPlugin:
    """Registered by the browser plugin; its pytest-html hooks are optional (no pytest-html, no-op).

    Every report is folded into `results` (harness/results.py), on the xdist controller too: the
    summary is computed from those records only, so a merged run's summary is the same code's.
    """

    config: pytest.Config
    results: RunResults = field(default_factory=lambda: RunResults(target=""))

    @property
    def target(self) -> Target | None:
        return self.config.stash.get(TARGET_KEY, None)

    def pytest_sessionstart(self, session: Any) -> None:
        target = self.target
        if target is not None:
            self.results.target, self.results.target_title = target.name, target.title
        self.results.workers = int(getattr(self.config.option, "numprocesses", 0) or 0)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.results.record(report)
        if report.when == "teardown":
            _refresh_environment()

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_report_title(self, report: Any) -> None:
        target = self.target
        report.title = "Throughline: end-to-end journeys" + (f" on {target.title}" if target else "")

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_header(self, cells: list[str]) -> None:
        cells.insert(2, '<th class="sortable" data-column-type="priority">Priority</th>')
        cells.insert(3, '<th class="sortable" data-column-type="mrr">MRR</th>')
        cells.insert(4, '<th data-column-type="components">Components</th>')

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_row(self, report: Any, cells: list[str]) -> None:
        info = getattr(report, JOURNEY_ATTR, None)
        cells.insert(2, f'<td class="col-priority">{esc(info["priority"]) if info else "—"}</td>')
        cells.insert(3, f'<td class="col-mrr">{money(info["mrr"]) if info else "—"}</td>')
        components = ", ".join(info["components"]) if info else ""
        cells.insert(4, f'<td class="col-components">{esc(components)}</td>')

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_html(self, report: Any, data: list[str]) -> None:
        # The log pane (longrepr, captured output, sections): redact what may have escaped so far.
        data[:] = [html.escape(redact(html.unescape(chunk)), quote=False) for chunk in data]
        # pytest-html only knows "Skipped": say plainly, first, that this one is not applicable.
        reason = not_applicable_reason_of(report)
        if reason is not None:
            data.insert(0, f"NOT APPLICABLE: {esc(reason)}\n")

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(
        self, prefix: list[str], summary: list[str], postfix: list[str], session: Any = None
    ) -> None:
        prefix.append(self.summary_html())

    def finish(self) -> RunResults:
        """The run's results, closed now, with the environment as last seen."""
        _refresh_environment()
        self.results.environment = dict(_environment_snapshot)
        self.results.finished = time.time()
        return self.results

    def summary_html(self) -> str:
        self.finish()
        return summary_html(self.results, self.target, self.config.getoption("--detection", None))

    def journey_results(self) -> list[JourneyResult]:
        return journey_results(self.results)

    def defect_runs(self, defect: Defect) -> list[tuple[str, str]]:
        return defect_runs(self.results, defect)


# -- the release manager's summary, from results only ------------------------------------
def journey_results(results: RunResults) -> list[JourneyResult]:
    """Tests grouped by journey name: a journey fails if any of its tests failed."""
    grouped: dict[str, JourneyResult] = {}
    for nid, rec in results.tests.items():
        info = rec.journey
        if not info:
            continue
        result = grouped.setdefault(info["name"], JourneyResult(info["name"], info["priority"], info["mrr"]))
        result.components.update(info["components"])
        result.tests[nid] = rec.outcome
    return sorted(grouped.values(), key=lambda r: (_ORDER[r.outcome], r.priority, -r.mrr, r.name))


def verdict_of(results: RunResults) -> str:
    """GREEN, AT RISK (a failure), or RELEASE BLOCKED (a P0 journey failed)."""
    journeys = journey_results(results)
    # Known defects and not-applicable journeys are stated, not failures: only a failure turns it.
    if any(j.outcome == FAILED and j.priority == "P0" for j in journeys):
        return "RELEASE BLOCKED"
    if any(j.outcome == FAILED for j in journeys) or results.counts()[FAILED]:
        return "AT RISK"
    return "GREEN"


def summary_html(results: RunResults, target: Target | None, detection: str | None = None) -> str:
    """The release summary: verdict, journeys by priority, MRR, not applicable, defects, environment."""
    journeys = journey_results(results)
    on = f": {esc(target.title)}" if target else ""
    parts = [_SUMMARY_CSS, f'<div class="tl-summary"><h2>Release summary{on}</h2>']
    if target is not None and target.description:
        parts.append(f"<p>Target <b>{esc(target.title)}</b>: {esc(target.description)}</p>")
    protected = sum(j.mrr for j in journeys if j.outcome == PASSED)
    at_risk = sum(j.mrr for j in journeys if j.outcome == FAILED)
    behind_defects = sum(j.mrr for j in journeys if j.outcome == KNOWN_DEFECT)
    counts = _counts(j.outcome for j in journeys)
    test_counts = results.counts()
    tests = sum(len(j.tests) for j in journeys)
    verdict = verdict_of(results)
    css = {"GREEN": "tl-green", "AT RISK": "tl-amber", "RELEASE BLOCKED": "tl-red"}[verdict]
    where = f" on {esc(target.title)}" if target else ""
    how = []
    if results.shard:
        how.append(f"shard {esc(results.shard)}")
    if results.workers:
        how.append(f"{results.workers} workers")
    ran = f" ({', '.join(how)})" if how else ""
    parts.append(
        f'<p class="tl-verdict {css}"><b>{verdict}</b>: {len(journeys)} journeys ({tests} tests){where}, '
        f"{_tally(counts)}. Tests: {_tally(test_counts)}. "
        f"MRR protected {money(protected)}; MRR at risk {money(at_risk)}; "
        f"MRR behind known defects {money(behind_defects)}. "
        f"Suite duration {results.wall_seconds:.1f} s{ran}.</p>"
    )
    parts.append(
        '<table class="tl-table"><tr><th>Priority</th><th>Journeys</th><th>Passed</th><th>Failed</th>'
        "<th>Not applicable</th><th>Known defects</th><th>Skipped</th>"
        "<th>MRR protected</th><th>MRR at risk</th></tr>"
    )
    for priority in PRIORITIES:
        these = [j for j in journeys if j.priority == priority]
        if not these:
            continue
        c = _counts(j.outcome for j in these)
        p = sum(j.mrr for j in these if j.outcome == PASSED)
        r = sum(j.mrr for j in these if j.outcome == FAILED)
        parts.append(
            f"<tr><td>{priority}</td><td>{len(these)}</td><td>{c[PASSED]}</td><td>{c[FAILED]}</td>"
            f"<td>{c[NOT_APPLICABLE]}</td><td>{c[KNOWN_DEFECT]}</td><td>{c[SKIPPED]}</td>"
            f"<td>{money(p)}</td><td>{money(r)}</td></tr>"
        )
    parts.append("</table>")
    if journeys:
        parts.append(
            '<table class="tl-table"><tr><th>Journey</th><th>Priority</th><th>Result</th><th>Tests</th>'
            "<th>MRR</th><th>Components</th></tr>"
        )
        for j in journeys:
            passed = sum(1 for o in j.tests.values() if o == PASSED)
            parts.append(
                f"<tr class='tl-{j.outcome.replace(' ', '-')}'><td title='{esc(chr(10).join(j.tests))}'>"
                f"{esc(j.name)}</td><td>{j.priority}</td><td>{j.outcome}</td><td>{passed}/{len(j.tests)}</td>"
                f"<td>{money(j.mrr)}</td><td>{esc(', '.join(sorted(j.components)))}</td></tr>"
            )
        parts.append("</table>")
    covered = sorted({c for j in journeys for c in j.components})
    passed_cov = sorted({c for j in journeys if j.outcome == PASSED for c in j.components})
    parts.append(
        f"<p>Components covered: {esc(', '.join(covered) or 'none')} "
        f"({len(covered)}/{len(COMPONENTS)}); proven by a passing journey: "
        f"{esc(', '.join(passed_cov) or 'none')}; not covered: "
        f"{esc(', '.join(sorted(COMPONENTS - set(covered))) or 'none')}.</p>"
    )
    if target is not None:
        parts.append(_not_applicable_html(results, target))
        parts.append(_defects_html(results, target))
    parts.append(_detection_html(detection))
    parts.append(platform_coverage_html(results.platform_coverage))
    parts.append(_environment_html(results))
    parts.append("</div>")
    return "".join(parts)


def _not_applicable_html(results: RunResults, target: Target) -> str:
    rows = [(nid, t.reason or "") for nid, t in results.tests.items() if t.outcome == NOT_APPLICABLE]
    if not rows:
        return (
            f"<h3>Not applicable on {esc(target.name)}</h3><p>None: every test that ran applies to "
            f"{esc(target.name)}.</p>"
        )
    parts = [
        f"<h3>Not applicable on {esc(target.name)}</h3>",
        '<table class="tl-table"><tr><th>Test</th><th>Reason</th></tr>',
    ]
    parts += [
        f"<tr class='tl-not-applicable'><td>{esc(nid)}</td><td>{esc(why)}</td></tr>" for nid, why in rows
    ]
    parts.append("</table>")
    return "".join(parts)


def defect_runs(results: RunResults, defect: Defect) -> list[tuple[str, str]]:
    """(node id, how it ran) for every test the defect was applied to this run."""
    runs = []
    for nid, entry in results.tests.items():
        if entry.registered_defect != defect.id:
            continue
        if entry.outcome == NOT_APPLICABLE:
            runs.append((nid, "not run (not applicable)"))
        elif entry.defect is not None:
            runs.append((nid, DEFECT_RUN_TEXT.get(entry.defect[1], entry.defect[1])))
        else:
            runs.append((nid, "not run" if entry.outcome == SKIPPED else entry.outcome))
    return runs


def _defects_html(results: RunResults, target: Target) -> str:
    if not target.defects:
        return (
            f"<h3>Defects found in {esc(target.name)}</h3><p>None registered "
            f"({esc(str(target.folder / 'defects.toml'))}).</p>"
        )
    parts = [
        f"<h3>Defects found in {esc(target.name)}</h3>",
        '<table class="tl-table"><tr><th>Defect</th><th>Summary</th><th>Evidence</th><th>Test</th>'
        "<th>Step</th><th>This run</th></tr>",
    ]
    for defect in target.defects:
        runs = defect_runs(results, defect) or [(defect.test, "not run")]
        this_run = "<br>".join(
            esc(status) if len(runs) == 1 else f"{esc(nid)}: {esc(status)}" for nid, status in runs
        )
        parts.append(
            f"<tr><td>{esc(defect.id)}</td><td>{esc(defect.summary)}</td><td>{esc(defect.evidence)}</td>"
            f"<td>{esc(defect.test)}</td><td>{esc(defect.step or 'any')}</td><td>{this_run}</td></tr>"
        )
    parts.append("</table>")
    return "".join(parts)


def _detection_html(path: str | None) -> str:
    """A prove run named by --detection (its JSON), else the placeholder prove fills in itself."""
    if not path:
        return detection_placeholder()
    try:
        run = ProveRun.load(Path(path))
    except (OSError, ValueError, TypeError) as exc:
        return (
            f"{DETECTION_START}<h3>Detection</h3><p>The prove result {esc(path)} cannot be read: "
            f"{esc(type(exc).__name__)}: {esc(exc)}</p>{DETECTION_END}"
        )
    return detection_html(run)


def real_vs_stand_in(environment: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(real components, stand-ins) of a run's environment."""
    env = dict(environment)
    components = env.pop("components", None)
    real = list(env.pop("real", []) or [])
    stand_ins = list(env.pop("stand_ins", []) or [])
    if isinstance(components, dict):
        for name, kind in components.items():
            (real if str(kind).strip().lower() == "real" else stand_ins).append(
                name if str(kind).lower() == "real" else f"{name} ({kind})"
            )
    return real, stand_ins


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def platform_coverage_html(figures: dict[str, Any] | None) -> str:
    """Coverage of the platform under test (--platform-coverage): per service, per file, never entered."""
    if not figures:
        return ""
    total = figures["total"]
    parts = [
        '<h3 id="tl-platform-coverage">Platform coverage</h3>',
        f"<p>The platform's own Python code the journeys ran, measured by coverage.py in every service "
        f"process: lines {_pct(total['line_percent'])}, branches {_pct(total['branch_percent'])} in all "
        "(the framework and the stand-ins are not counted; docs/platform-coverage.md).</p>",
        '<table class="tl-table"><tr><th>Service</th><th>Lines</th><th>Lines covered</th><th>Branches</th>'
        "<th>Branches covered</th><th>Files</th><th>Never entered</th></tr>",
    ]
    services = figures["services"]
    for name, svc in services.items():
        parts.append(
            f"<tr><td>{esc(name)}</td><td>{_pct(svc['line_percent'])}</td>"
            f"<td>{svc['lines_covered']}/{svc['lines_total']}</td><td>{_pct(svc['branch_percent'])}</td>"
            f"<td>{svc['branches_covered']}/{svc['branches_total']}</td><td>{len(svc['files'])}</td>"
            f"<td>{len(svc['never_entered'])}</td></tr>"
        )
    parts.append("</table>")
    for name, svc in services.items():
        parts.append(
            f"<details class='tl-coverage-files'><summary>{esc(name)}: {len(svc['files'])} files</summary>"
            "<table class='tl-table'><tr><th>File</th><th>Lines</th><th>Branches</th><th>Statements</th>"
            "<th>Missing</th></tr>"
        )
        for f in svc["files"]:
            parts.append(
                f"<tr><td>{esc(f['path'])}</td><td>{_pct(f['line_percent'])}</td>"
                f"<td>{_pct(f['branch_percent'])}</td><td>{f['lines_total']}</td><td>{f['missing']}</td></tr>"
            )
        parts.append("</table></details>")
        never = svc["never_entered"]
        parts.append(
            f"<p>{esc(name)}: files the journeys never entered: "
            f"{esc(', '.join(never)) if never else 'none'}.</p>"
        )
    return "".join(parts)


def _environment_html(results: RunResults) -> str:
    env = results.merged_environment()
    real, stand_ins = real_vs_stand_in(env)
    for key in ("components", "real", "stand_ins"):
        env.pop(key, None)
    parts = []
    total = len(real) + len(stand_ins)
    if total:
        parts.append(
            f"<p>Real vs stand-in: {len(real)} real / {len(stand_ins)} stand-in "
            f"({100 * len(real) / total:.0f}% real). Real: {esc(', '.join(real) or 'none')}. "
            f"Stand-ins: {esc(', '.join(stand_ins) or 'none')}.</p>"
        )
    else:
        parts.append("<p>Real vs stand-in: unknown (no environment provider registered).</p>")
    if results.commit:
        env.setdefault("commit", results.commit)
    if env:
        parts.append("<table><tr><th>Environment</th><th></th></tr>")
        parts += [f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in env.items()]
        parts.append("</table>")
    return "".join(parts)


# -- Detection: what `throughline prove` showed the journeys catch (harness/prove.py) ---------------
DETECTION_START, DETECTION_END = "<!--tl-detection-->", "<!--/tl-detection-->"


def detection_placeholder() -> str:
    """The Detection section of a journeys-only run; `throughline prove` replaces it with its findings."""
    return (
        f"{DETECTION_START}<h3>Detection</h3><p>Not measured in this run: <code>throughline prove</code> "
        "breaks the platform on purpose, one defect drill at a time, and fills this section with the "
        f"journeys and steps that caught each.</p>{DETECTION_END}"
    )


def replace_detection(document: str, section: str) -> str:
    """The report with its Detection section replaced (the first one; a report has one)."""
    start = document.index(DETECTION_START)
    end = document.index(DETECTION_END, start) + len(DETECTION_END)
    return document[:start] + section + document[end:]


def detection_html(run: ProveRun) -> str:
    """The Detection section: the verdict, the drill x journey matrix, each caught drill's failing step."""
    names = run.journey_names()
    ok = run.ok
    parts = [
        DETECTION_START,
        _SUMMARY_CSS,
        "<style>.tl-detection td{color:#1f2328;vertical-align:top}.tl-detection .tl-breaks{min-width:260px}"
        ".tl-detection .tl-cell{text-align:center;font-size:11px}</style>",
        f"<h3>Detection on {esc(run.target)}</h3>",
        f'<p class="tl-verdict {"tl-green" if ok else "tl-red"}"><b>{"PROVEN" if ok else "NOT PROVEN"}</b>: '
        f"{esc(run.verdict())}. Wall time {run.wall_seconds:.0f} s (baseline {run.baseline_seconds:.0f} s)"
        f"{esc('; only ' + ', '.join(run.only)) if run.only else ''}"
        f"{esc('; measured ' + run.finished_at) if run.finished_at else ''}.</p>",
        "<p>Each drill is one realistic defect patched into a scratch copy of the platform; the journeys "
        "that declare it run against that copy and the first failure counts. A drill that stops the "
        "platform from starting, or that also breaks a control journey not declaring it, is too coarse, "
        "not caught.</p>",
    ]
    if run.undeclared:
        parts.append(f"<p>Journey tests declaring no drill: {esc(', '.join(run.undeclared))}.</p>")
    head = "".join(f"<th title='{esc(n)}'>J{i}</th>" for i, n in enumerate(names, 1))
    parts.append(
        f'<table class="tl-table tl-detection"><tr><th>Drill</th><th>What breaks for a user</th>{head}'
        "<th>Result</th><th>Caught by</th><th>Failing step</th><th>Time</th></tr>"
    )
    for result in run.results:
        cells = run.cells(result)
        row = "".join(f"<td class='tl-cell'>{esc(cells[n])}</td>" for n in names)
        css = "tl-passed" if result.status == CAUGHT else "tl-failed"
        step = result.step or ("outside any step" if result.status == CAUGHT else "")
        error = f"<br><small>{esc(result.error)}</small>" if result.error else ""
        parts.append(
            f"<tr class='{css}'><td>{esc(result.drill)}</td><td class='tl-breaks'>{esc(result.breaks)}</td>{row}"
            f"<td>{esc(result.status)}{': ' + esc(result.detail) if result.detail else ''}</td>"
            f"<td title='{esc(result.caught_by or '')}'>{esc((result.caught_by or '').split('::')[-1])}</td>"
            f"<td>{esc(step)}{error}</td><td>{result.seconds:.0f} s</td></tr>"
        )
    parts.append("</table>")
    parts.append(
        "<p>" + "; ".join(f"J{i} = {esc(n)}" for i, n in enumerate(names, 1)) + ". CAUGHT: its test failed "
        "first; pass: declared and passed; xf: declared, stopped at its registered defect before "
        "catching it; -: declared, not reached (stopped at the first failure); "
        "ctl: the control journey (not declaring the drill) ran first and passed (ctl!: and failed, "
        "so the drill is too coarse).</p>"
    )
    parts.append(DETECTION_END)
    return "".join(parts)


def html_extra(config: pytest.Config, content: str) -> dict[str, Any] | None:
    """A pytest-html `html` extra, or None without pytest-html."""
    plugin = config.pluginmanager.getplugin("html")
    if plugin is None:
        return None
    return plugin.extras.html(content)


def failure_text_sections(
    failed_step: str | None,
    steps_text: str | None,
    recorders: Iterable[Any],
    trail: DataTrail | None,
    log_tails: dict[str, str],
) -> list[tuple[str, str]]:
    """(title, text) report sections for a failed test, all redacted."""
    sections = [("Failed step", failed_step or "no step failed: the failure happened outside any step()")]
    if steps_text:
        sections.append(("Steps", steps_text))
    for recorder in recorders:
        sections.append((f"WebSocket frames ({recorder.label})", recorder.format_frames(last=30)))
    if trail is not None:
        sections.append(("Data trail", trail.format()))
    for name, tail in log_tails.items():
        sections.append((f"Service log: {name}", tail))
    return [(redact(t), redact(s)) for t, s in sections]


def _screenshot_html(path: str) -> str:
    """The failure screenshot embedded as a data URI, so the report stays one self-contained file."""
    try:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    except OSError as exc:
        return f"<p>Screenshot {esc(path)} cannot be read: {esc(type(exc).__name__)}</p>"
    return (
        f"<details class='tl-section' open><summary><b>Screenshot</b></summary>"
        f"<img class='tl-screenshot' alt='failure screenshot' style='max-width:100%' "
        f"src='data:image/png;base64,{data}'></details>"
    )


# -- a report of results alone (`throughline report merge`) ----------------------------------------
def results_html(results: RunResults, target: Target | None) -> str:
    """A self-contained HTML release report built from results only: the same summary as a single
    run's report, then every test with the shard and worker that ran it and its failure evidence."""
    title = "Throughline: end-to-end journeys" + (f" on {target.title}" if target else "")
    rows = []
    order = {FAILED: 0, KNOWN_DEFECT: 1, SKIPPED: 2, NOT_APPLICABLE: 3, PASSED: 4}
    for rec in sorted(results.tests.values(), key=lambda t: (order[t.outcome], t.nodeid)):
        info = rec.journey or {}
        note = rec.reason or (
            f"{rec.defect[0]}: {DEFECT_RUN_TEXT.get(rec.defect[1], rec.defect[1])}" if rec.defect else ""
        )
        detail = ""
        if rec.outcome == FAILED:
            blocks = [text_block("Failure", rec.message or "")]
            if rec.steps:
                lines = [
                    f"{'  ' * int(s.get('depth') or 0)}{s.get('number')} {s.get('name')}: {s.get('status')}"
                    + (f" ({s['note']})" if s.get("note") else "")
                    for s in rec.steps
                ]
                blocks.append(text_block("Steps", "\n".join(lines)))
            blocks += [text_block(t, body) for t, body in rec.sections if t not in ("Steps",)]
            if rec.longrepr:
                blocks.append(text_block("Traceback", rec.longrepr))
            detail = "".join(blocks)
        detail += "".join(
            _screenshot_html(path) for kind, path in rec.artifacts if kind == "playwright_screenshot"
        )
        if rec.artifacts:
            detail += text_block("Playwright artifacts", "\n".join(f"{k}: {p}" for k, p in rec.artifacts))
        rows.append(
            f"<tr class='tl-{rec.outcome.replace(' ', '-')}'><td>{esc(rec.nodeid)}{detail}</td>"
            f"<td>{esc(info.get('name', ''))}</td><td>{esc(info.get('priority', '—'))}</td>"
            f"<td>{esc(rec.outcome)}</td><td>{esc(note)}</td><td>{rec.duration:.1f} s</td>"
            f"<td>{esc(rec.shard or '')}</td><td>{esc(rec.worker or '')}</td></tr>"
        )
    sources = "".join(f"<li>{esc(s)}</li>" for s in results.sources)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:20px;color:#1f2328}"
        "td{vertical-align:top}details pre{max-height:420px;overflow:auto;background:#f6f8fa;padding:6px}"
        "</style></head><body>"
        f"<h1>{esc(title)}</h1>"
        f"{summary_html(results, target)}"
        f"<h2>Tests ({len(results.tests)})</h2>"
        '<table class="tl-table"><tr><th>Test</th><th>Journey</th><th>Priority</th><th>Result</th>'
        "<th>Reason / defect</th><th>Duration</th><th>Shard</th><th>Worker</th></tr>"
        + "".join(rows)
        + "</table>"
        + (f"<h3>Merged from</h3><ul>{sources}</ul>" if sources else "")
        + "</body></html>"
    )
