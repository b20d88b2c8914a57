"""CI outputs built from a run's results.json: the job summary, release gates, the trend, notifications.

Everything here reads `RunResults` (harness/results.py) and the summary's own functions in
harness/report.py (`journey_results`, `verdict_of`, `real_vs_stand_in`): nothing is computed
twice, and it works the same for a serial run, a pytest-xdist run and merged results.

Red -> green needs the previous verdict: it comes from the previous results, either named
(`--previous PATH`) or, with `--previous last`, the newest other run folder in the reports
dir (DIR/runs/<id>/results.json).
"""

from __future__ import annotations

import html
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from harness.journey import PRIORITIES
from harness.redact import redact, redact_value
from harness.report import journey_results, money, real_vs_stand_in, verdict_of
from harness.results import FAILED, NOT_APPLICABLE, PASSED, RESULTS_FILE, ResultsError, RunResults
from harness.target import TargetError, load_target

NOTIFY_ENV = "THROUGHLINE_NOTIFY_URL"
SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


class CiInputError(ValueError):
    """A gate rule, threshold, path or URL that cannot be used; the message is one line."""


# -- gates: the rules, in one place ----------------------------------------------------------------
# name -> (default threshold or None, what it checks)
GATES: dict[str, tuple[float | None, str]] = {
    "p0": (None, "every P0 journey passed"),
    "supported": (None, "no journey was not applicable that the target declares it supports"),
    "real": (80.0, "the real-vs-stand-in ratio is at least the threshold (the plan's 80/20)"),
    "coverage": (70.0, "platform line coverage is at least the threshold (needs --platform-coverage)"),
}
DEFAULT_GATES = ("p0", "supported", "real>=80")
_RULE = re.compile(r"^\s*([a-z0-9_]+)\s*(?:>=\s*([0-9]+(?:\.[0-9]+)?)\s*%?)?\s*$")


@dataclass(frozen=True)
class Gate:
    name: str
    threshold: float | None = None

    def __str__(self) -> str:
        return self.name if self.threshold is None else f"{self.name}>={self.threshold:g}"


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    passed: bool
    why: str


def parse_gates(specs: list[str]) -> list[Gate]:
    """`--gate` values (each may be a comma list; `default` is DEFAULT_GATES) -> gates, or CiInputError."""
    gates: list[Gate] = []
    for spec in specs:
        for part in spec.split(","):
            if part.strip() == "default":
                gates += parse_gates(list(DEFAULT_GATES))
                continue
            match = _RULE.match(part)
            if match is None:
                raise CiInputError(
                    f"malformed gate rule {part!r}: write NAME or NAME>=PERCENT, e.g. p0 or coverage>=70"
                )
            name, value = match.group(1), match.group(2)
            if name not in GATES:
                raise CiInputError(f"unknown gate {name!r}; known gates: {', '.join(GATES)}")
            default = GATES[name][0]
            if default is None and value is not None:
                raise CiInputError(f"gate {name!r} takes no threshold (write just {name})")
            threshold = float(value) if value is not None else default
            if threshold is not None and not 0 <= threshold <= 100:
                raise CiInputError(f"gate {name}: threshold {threshold:g} is out of 0 to 100")
            gates.append(Gate(name, threshold))
    return list(dict.fromkeys(gates))


def _lacked(reason: str) -> list[str]:
    """The capabilities a not-applicable reason names ("... lacks a, b (detail)")."""
    match = re.search(r": lacks ([a-z0-9_, ]+)", reason)
    return [c.strip() for c in match.group(1).split(",") if c.strip()] if match else []


def evaluate_gate(gate: Gate, results: RunResults) -> GateResult:
    """Whether the run passes `gate`, and why, in words an operator reads."""
    if gate.name == "p0":
        failed = [j.name for j in journey_results(results) if j.priority == "P0" and j.outcome != PASSED]
        p0 = [j for j in journey_results(results) if j.priority == "P0"]
        if failed:
            return GateResult(gate, False, f"P0 journeys not passed: {', '.join(failed)}")
        return GateResult(gate, True, f"all {len(p0)} P0 journeys passed")
    if gate.name == "supported":
        try:
            declared = load_target(results.target).capabilities if results.target else frozenset()
        except TargetError as exc:
            return GateResult(gate, False, f"cannot read the target's capabilities: {exc}")
        wrong = [
            f"{nid} ({', '.join(c for c in _lacked(rec.reason or '') if c in declared)})"
            for nid, rec in results.tests.items()
            if rec.outcome == NOT_APPLICABLE and any(c in declared for c in _lacked(rec.reason or ""))
        ]
        if wrong:
            return GateResult(
                gate, False, f"not applicable although {results.target} declares it: {'; '.join(wrong)}"
            )
        return GateResult(gate, True, "no test was not applicable for a capability the target declares")
    if gate.name == "real":
        real, stand_ins = real_vs_stand_in(results.merged_environment())
        total = len(real) + len(stand_ins)
        if not total:
            return GateResult(gate, False, "real vs stand-in unknown: the run recorded no components")
        percent = 100 * len(real) / total
        ok = percent >= (gate.threshold or 0)
        return GateResult(
            gate, ok, f"{percent:.0f}% real ({len(real)}/{total}), needs at least {gate.threshold:g}%"
        )
    # coverage
    coverage = getattr(results, "platform_coverage", None)
    if not coverage:
        return GateResult(gate, False, "no platform coverage was measured: run with --platform-coverage")
    percent = float(coverage["total"]["line_percent"])
    ok = percent >= (gate.threshold or 0)
    return GateResult(gate, ok, f"platform line coverage {percent:.1f}%, needs at least {gate.threshold:g}%")


def evaluate_gates(gates: list[Gate], results: RunResults) -> list[GateResult]:
    return [evaluate_gate(g, results) for g in gates]


# -- previous results and the trend -----------------------------------------------------------------
def previous_results_path(spec: str, current: Path, reports: Path) -> Path | None:
    """The previous results file: a path (file or run folder), or `last`, the newest other run (None: first run)."""
    if spec == "last":
        current_dir = current.resolve().parent
        runs = [
            p
            for p in (reports / "runs").glob(f"*/{RESULTS_FILE}")
            if p.resolve().parent != current_dir and p.stat().st_mtime <= current.stat().st_mtime
        ]
        return max(runs, key=lambda p: p.stat().st_mtime) if runs else None
    path = Path(spec)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise CiInputError(f"--previous {spec}: no such results file")
    return path


def check_previous_spec(spec: str | None) -> None:
    """Fail early (before any test runs) on a previous-results path that does not exist."""
    if spec and spec != "last":
        path = Path(spec)
        if not (path.is_file() or (path / RESULTS_FILE).is_file()):
            raise CiInputError(f"--previous {spec}: no such results file or run folder")


@dataclass
class Trend:
    newly_failed: list[str]
    fixed: list[str]
    durations: list[tuple[str, float, float | None]]  # (journey, now s, before s or None)
    previous_verdict: str


def _journey_durations(results: RunResults) -> dict[str, float]:
    out: dict[str, float] = {}
    for rec in results.tests.values():
        if rec.journey:
            out[rec.journey["name"]] = out.get(rec.journey["name"], 0.0) + rec.duration
    return out


def trend_of(current: RunResults, previous: RunResults) -> Trend:
    """What newly failed, what was fixed, and each journey's duration change since `previous`."""
    now = {j.name: j.outcome for j in journey_results(current)}
    before = {j.name: j.outcome for j in journey_results(previous)}
    newly_failed = sorted(n for n, o in now.items() if o == FAILED and before.get(n, FAILED) != FAILED)
    fixed = sorted(n for n, o in now.items() if o == PASSED and before.get(n) == FAILED)
    d_now, d_before = _journey_durations(current), _journey_durations(previous)
    durations = [(n, d_now[n], d_before.get(n)) for n in sorted(d_now)]
    return Trend(newly_failed, fixed, durations, verdict_of(previous))


# -- the job summary (Markdown) -----------------------------------------------------------------------
def _failures(results: RunResults) -> list[tuple[str, str, str, int, str]]:
    """(journey, priority, failed step, MRR, headline) of every failed test."""
    out = []
    for nid, rec in sorted(results.tests.items()):
        if rec.outcome != FAILED:
            continue
        step = next((s for s in rec.steps if s.get("status") == "failed"), None)
        info = rec.journey or {}
        out.append(
            (
                str(info.get("name") or nid),
                str(info.get("priority") or "—"),
                f"{step.get('number')} {step.get('name')}" if step else "no step failed (outside any step)",
                int(info.get("mrr") or 0),
                (rec.message or "").splitlines()[0] if rec.message else "",
            )
        )
    return out


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def summary_markdown(
    results: RunResults,
    *,
    report_dir: Path | None = None,
    gates: list[GateResult] | None = None,
    trend: Trend | None = None,
) -> str:
    """The Markdown release summary of `results`, redacted."""
    journeys = journey_results(results)
    verdict = verdict_of(results)
    icon = {"GREEN": "🟢", "AT RISK": "🟠", "RELEASE BLOCKED": "🔴"}[verdict]
    protected = sum(j.mrr for j in journeys if j.outcome == PASSED)
    at_risk = sum(j.mrr for j in journeys if j.outcome == FAILED)
    lines = [
        f"## {icon} Throughline: {verdict} on {results.target_title or results.target}",
        "",
        f"{len(journeys)} journeys, {len(results.tests)} tests; MRR protected **{money(protected)}**, "
        f"MRR at risk **{money(at_risk)}**; {results.wall_seconds:.0f} s"
        + (f"; commit `{results.commit}`" if results.commit else ""),
        "",
        "| Priority | Journeys | Passed | Failed | Not applicable | Known defects | MRR protected | MRR at risk |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for priority in PRIORITIES:
        these = [j for j in journeys if j.priority == priority]
        if not these:
            continue
        seen = [j.outcome for j in these]
        lines.append(
            f"| {priority} | {len(these)} | {seen.count(PASSED)} | {seen.count(FAILED)} | "
            f"{seen.count(NOT_APPLICABLE)} | {seen.count('known defect')} | "
            f"{money(sum(j.mrr for j in these if j.outcome == PASSED))} | "
            f"{money(sum(j.mrr for j in these if j.outcome == FAILED))} |"
        )
    failures = _failures(results)
    if failures:
        lines += [
            "",
            "### Failures",
            "",
            "| Journey | Priority | Failed step | MRR | Error |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {_cell(j)} | {p} | {_cell(s)} | {money(m)} | {_cell(e)} |" for j, p, s, m, e in failures
        ]
    if gates:
        lines += ["", "### Gates", "", "| Gate | Result | Why |", "|---|---|---|"]
        lines += [f"| `{g.gate}` | {'pass' if g.passed else '**FAIL**'} | {_cell(g.why)} |" for g in gates]
    if trend is not None:
        lines += ["", f"### Trend (previous run: {trend.previous_verdict})", ""]
        lines.append(f"- Newly failed: {', '.join(trend.newly_failed) or 'none'}")
        lines.append(f"- Fixed: {', '.join(trend.fixed) or 'none'}")
        lines += ["", "| Journey | Duration | Change |", "|---|---|---|"]
        for name, now, before in trend.durations:
            change = "new" if before is None else f"{now - before:+.1f} s"
            lines.append(f"| {_cell(name)} | {now:.1f} s | {change} |")
    if report_dir is not None:
        lines += ["", "### Artifacts", ""]
        for name in ("report.html", "junit.xml", RESULTS_FILE, "artifacts"):
            if (report_dir / name).exists():
                lines.append(f"- `{report_dir / name}`")
    return redact("\n".join(lines) + "\n")


def write_summary(text: str) -> str:
    """Append to $GITHUB_STEP_SUMMARY when set (returns where), else print to stdout."""
    target = os.environ.get(SUMMARY_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(text)
        return target
    print(text, end="")
    return "stdout"


# -- notifications ---------------------------------------------------------------------------------
def check_notify_url(url: str | None) -> None:
    if url and not re.match(r"^https?://[^/\s]+", url):
        raise CiInputError(f"notify URL {redact(url)!r} is not an http(s) URL")


def notify_kind(results: RunResults, previous: RunResults | None) -> str | None:
    """'failure' for every red run, 'recovery' when a red previous run turned green, else None."""
    if verdict_of(results) != "GREEN":
        return "failure"
    if previous is not None and verdict_of(previous) != "GREEN":
        return "recovery"
    return None


def notify_payload(results: RunResults, kind: str, report: str) -> dict[str, Any]:
    """One Slack-compatible message (`text`), with the same facts as data, redacted."""
    verdict = verdict_of(results)
    failures: list[dict[str, Any]] = [
        {"journey": j, "priority": p, "step": s, "mrr": m} for j, p, s, m, _ in _failures(results)
    ]
    head = f"Throughline {'recovered' if kind == 'recovery' else verdict} on {results.target}"
    rows = [f"• {f['journey']} ({f['priority']}, {money(f['mrr'])}): {f['step']}" for f in failures]
    text = "\n".join([f"{head}: {verdict}", *rows, f"Report: {report}"])
    payload = {
        "text": text,
        "throughline": {
            "kind": kind,
            "verdict": verdict,
            "target": results.target,
            "commit": results.commit,
            "failures": failures,
            "report": report,
        },
    }
    return dict(redact_value(payload))


def post_notification(
    url: str, payload: dict[str, Any], *, timeout: float = 5.0, attempts: int = 3, backoff: float = 0.5
) -> str | None:
    """POST once, retrying transport errors and 5xx/429 with back-off; the error text, or None when sent.

    A dead webhook never raises: the caller says so and the run goes on.
    """
    error = "not tried"
    with httpx.Client(timeout=timeout) as client:
        for attempt in range(attempts):
            try:
                response = client.post(url, json=payload)
                if response.status_code < 400:
                    return None
                error = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break  # the webhook refuses it; retrying will not help
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt + 1 < attempts:
                time.sleep(backoff * 2**attempt)  # back-off between attempts, not a wait for state
    return redact(f"{error} after {attempt + 1} attempt(s)")


# -- all of it, after a run ------------------------------------------------------------------------
@dataclass
class CiOptions:
    gates: list[Gate]
    notify: str | None
    previous: str | None
    summary: bool


def ci_options(gate: list[str] | None, notify: str | None, previous: str | None, summary: bool) -> CiOptions:
    """Validated options (CiInputError on bad input), before anything runs."""
    gates = parse_gates(gate or [])
    notify = notify or os.environ.get(NOTIFY_ENV) or None
    check_notify_url(notify)
    check_previous_spec(previous)
    return CiOptions(gates, notify, previous, summary)


def after_run(results_path: Path, options: CiOptions, reports: Path | None = None) -> int:
    """Summary, trend, gates and notification for one results file; 1 when a gate failed, else 0."""
    try:
        results = RunResults.load(results_path)
        previous = None
        if options.previous:
            prev_path = previous_results_path(
                options.previous, results_path, reports or results_path.resolve().parent.parent.parent
            )
            previous = RunResults.load(prev_path) if prev_path is not None else None
    except (ResultsError, CiInputError) as exc:
        print(f"throughline: {exc}", flush=True)
        return 2
    trend = trend_of(results, previous) if previous is not None else None
    gate_results = evaluate_gates(options.gates, results)
    if options.summary:
        where = write_summary(
            summary_markdown(results, report_dir=results_path.parent, gates=gate_results, trend=trend)
        )
        if where != "stdout":
            print(f"throughline: job summary written to {where}")
    if options.notify:
        kind = notify_kind(results, previous)
        if kind is not None:
            report = str(results_path.parent / "report.html")
            error = post_notification(options.notify, notify_payload(results, kind, report))
            print(
                f"throughline: {kind} notification "
                + ("sent" if error is None else f"NOT sent, the webhook failed: {error}")
            )
    if gate_results:
        write_gates_into_report(results_path.parent / "report.html", gate_results)
    failed = [g for g in gate_results if not g.passed]
    for g in gate_results:
        print(f"throughline: gate {g.gate}: {'pass' if g.passed else 'FAILED'}: {g.why}")
    return 1 if failed else 0


GATES_BEGIN, GATES_END = "<!-- throughline-gates -->", "<!-- /throughline-gates -->"


def gates_html(gates: list[GateResult]) -> str:
    """The release gates as a block of the HTML report: which passed, which failed and why."""
    failed = [g for g in gates if not g.passed]
    colour = "#b42318" if failed else "#067647"
    head = (
        f"RELEASE GATES: {len(failed)} of {len(gates)} FAILED"
        if failed
        else f"RELEASE GATES: all {len(gates)} passed"
    )
    rows = "".join(
        f"<tr><td><code>{html.escape(str(g.gate))}</code></td>"
        f"<td style='color:{'#067647' if g.passed else '#b42318'}'>{'pass' if g.passed else 'FAILED'}</td>"
        f"<td>{html.escape(redact(g.why))}</td></tr>"
        for g in gates
    )
    return (
        f"{GATES_BEGIN}<section id='throughline-gates' style='border:2px solid {colour};padding:8px;margin:8px 0'>"
        f"<h2 style='color:{colour};margin:0 0 6px'>{head}</h2>"
        f"<table><tr><th>gate</th><th>result</th><th>why</th></tr>{rows}</table></section>{GATES_END}"
    )


def write_gates_into_report(report: Path, gates: list[GateResult]) -> None:
    """Put the gates at the top of the run's report.html (replacing an earlier evaluation's)."""
    if not report.is_file():
        return
    text = report.read_text(encoding="utf-8")
    if GATES_BEGIN in text and GATES_END in text:
        start, end = text.index(GATES_BEGIN), text.index(GATES_END) + len(GATES_END)
        text = text[:start] + text[end:]
    match = re.search(r"<body[^>]*>", text)
    at = match.end() if match else 0
    text = text[:at] + gates_html(gates) + text[at:]
    tmp = report.with_suffix(".html.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(report)


def gates_json(gates: list[GateResult]) -> str:
    return json.dumps([{"gate": str(g.gate), "passed": g.passed, "why": g.why} for g in gates])
