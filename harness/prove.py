"""`throughline prove`: every journey shows the defect it catches, by breaking the platform on purpose.

    throughline prove [--target T] [--only NAME[,NAME]] [--report PATH]

1. Collect the journeys (their `drills=[...]`); a journey test that declares no drill of the
   target, or a drill no journey declares, makes the run fail. Every drill must still apply.
2. Baseline: a pristine scratch copy of the platform runs every journey that declares a selected
   drill, plus the controls; all must pass, otherwise nothing is claimed.
3. Per drill: a fresh scratch copy with the drill applied; the stack runs the copy's code
   (THROUGHLINE_SOURCE_ROOT); first the control (a journey that does not declare the drill), then
   the declaring journeys, stopping at the first failure (-x). A drill that stops the platform
   from starting or fails the control is "too coarse", not caught. The copy is thrown away.
4. The drill x journey matrix on the terminal; the HTML report (the baseline's release report)
   gets its Detection section; the run as JSON beside it. Exit 0 only when every drill was caught.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import report
from harness.declaration import DeclarationError
from harness.detection import (
    BASELINE_EXPECTED,
    CAUGHT,
    ERROR,
    NOT_RUN,
    SURVIVED,
    TIMED_OUT,
    TOO_COARSE,
    UNGUARDED,
    DrillResult,
    ProveRun,
    merge_outcome,
    render_matrix,
)
from harness.drills import (
    PROJECT,
    Drill,
    DrillError,
    DrillSet,
    check_applies,
    load_target_drills,
    scratch_copy,
    source_root_env,
)
from harness.redact import redact
from harness.stack import declaration_of
from harness.target import Target, TargetError, load_target

RUN_TIMEOUT_S = 900.0  # one pytest run (stack start + journeys); a hang ends as "timed out", not forever
DEFAULT_REPORT = Path("reports") / "prove.html"


class ProveError(Exception):
    """Bad input to prove (unknown drill, malformed drills.toml, ...): one line, exit 2."""


# -- pytest runs ------------------------------------------------------------------------------
def _pytest_argv(target: Target, ids: list[str], extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        *ids,
        "--target",
        str(target.folder),
        "-p",
        "harness.plugin_prove",
        "-p",
        "no:cacheprovider",
        "-q",
        *extra,
    ]


def run_pytest(
    argv: list[str], *, env: dict[str, str], log: Path, timeout: float = RUN_TIMEOUT_S
) -> tuple[int | None, float]:
    """Run pytest in its own process group, output to `log`; (exit code or None on timeout, seconds)."""
    t0 = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            argv, cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
            _stop_group(proc)
        except BaseException:
            _stop_group(proc)  # Ctrl-C: pytest tears its stack down on SIGTERM
            raise
    return code, time.monotonic() - t0


def _stop_group(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def _log_tail(log: Path, lines: int = 12) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return redact("\n".join(text.splitlines()[-lines:]))


# -- collection -------------------------------------------------------------------------------
def collect(target: Target, work: Path) -> list[dict[str, Any]]:
    """Every collected journey item: nodeid, function, journey, drills, not_applicable."""
    out, log = work / "collect.json", work / "collect.log"
    argv = _pytest_argv(target, ["journeys"], ["--collect-only", "--prove-collect", str(out)])
    code, _ = run_pytest(argv, env=dict(os.environ), log=log, timeout=300)
    items = _read_json(out)
    if code != 0 or not items:
        raise ProveError(f"collecting the journeys failed (exit {code}):\n{_log_tail(log, 20)}")
    return [i for i in items if i.get("journey")]


def journey_functions(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Journey test functions (parametrizations folded): function -> {journey, drills, applicable}."""
    functions: dict[str, dict[str, Any]] = {}
    for item in items:
        entry = functions.setdefault(
            item["function"],
            {"journey": item["journey"], "drills": list(item["drills"]), "applicable": False},
        )
        entry["applicable"] |= item.get("not_applicable") is None
    return functions


# -- the run ----------------------------------------------------------------------------------
def classify(result: DrillResult, entries: list[dict[str, Any]], code: int | None, log: Path) -> DrillResult:
    """How one drill run ended, from the prove plugin's per-test entries (in run order)."""
    for entry in entries:
        if entry.get("outcome"):
            function = entry["function"]
            result.outcomes[function] = merge_outcome(result.outcomes.get(function), entry["outcome"])
    if code is None:
        result.status, result.detail = TIMED_OUT, f"the journeys did not finish within {RUN_TIMEOUT_S:.0f} s"
        return result
    start_failure = next((e for e in entries if e.get("platform_start")), None)
    if start_failure is not None:
        result.status = TOO_COARSE
        result.detail = f"the platform does not start ({start_failure.get('message', '')})"
        return result
    failed = [e for e in entries if e.get("outcome") == "failed"]
    control_failed = next((e for e in failed if e["function"] == result.control), None)
    if control_failed is not None:
        result.status = TOO_COARSE
        result.detail = (
            f"it also breaks the control {result.control}, which does not declare it "
            f"({control_failed.get('step') or control_failed.get('phase')})"
        )
        return result
    first = next((e for e in failed if e["function"] in result.declared), None)
    if first is not None:
        result.status, result.caught_by = CAUGHT, first["function"]
        result.step = first.get("step")
        if first.get("phase") != "call":
            result.step = f"{first.get('phase')} of the test"
        result.error = (
            f"{first.get('error_type')}: {first.get('message')}" if first.get("error_type") else None
        )
        return result
    ran = {e["function"] for e in entries if e.get("outcome") in BASELINE_EXPECTED}
    if code not in (0, 1) or not set(result.declared) <= ran:
        result.status = ERROR
        result.detail = f"pytest exit {code}; see {log}: {_log_tail(log, 3)}"
        return result
    result.status = SURVIVED
    result.detail = "every journey declaring it passed"
    return result


def pick_control(drills: DrillSet, drill: str, functions: dict[str, dict[str, Any]]) -> str | None:
    """The first control journey that applies to the target and does not declare the drill."""
    for control in drills.controls:
        info = functions.get(control)
        if info is not None and info["applicable"] and drill not in info["drills"]:
            return control
    return None


def select(drills: DrillSet, only: list[str]) -> list[Drill]:
    if not only:
        return list(drills.drills)
    unknown = [n for n in only if n not in drills.names()]
    if unknown:
        raise ProveError(
            f"unknown drill(s) {', '.join(unknown)} in --only; drills of {drills.path}: {', '.join(drills.names())}"
        )
    return [drills.get(n) for n in only]


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="throughline-prove-") as tmp:
        yield Path(tmp)


def _say(text: str) -> None:
    print(text, flush=True)  # progress lines appear as each drill ends, also when piped to a file


def prove(
    target: Target,
    *,
    only: list[str],
    report_path: Path,
    log_dir: Path,
    say: Any = _say,
) -> ProveRun:
    """The whole prove run (see the module docstring); raises ProveError on bad input."""
    t0 = time.monotonic()
    try:
        drills = load_target_drills(target.folder)
        if drills is None:
            raise ProveError(f"target '{target.name}' keeps no drills ({target.folder / 'drills.toml'})")
        chosen = select(drills, only)
        for drill in chosen:
            check_applies(drills, drill)  # a drill that no longer applies fails before anything runs
    except DrillError as exc:
        raise ProveError(str(exc)) from None
    run = ProveRun(target=target.title, only=list(only))
    with _workdir(None) as work:
        functions = journey_functions(collect(target, work))
        unknown_controls = [c for c in drills.controls if c not in functions]
        if unknown_controls:
            raise ProveError(
                f"{drills.path}: controls {unknown_controls} are no collected journey test "
                "(write them as journeys/test_x.py::test_y)"
            )
        run.journeys = {f: info["journey"] for f, info in functions.items()}
        names = set(drills.names())
        run.undeclared = [
            f for f, info in functions.items() if info["applicable"] and not names & set(info["drills"])
        ]
        results: list[DrillResult] = []
        for drill in chosen:
            declared = [
                f for f, info in functions.items() if info["applicable"] and drill.name in info["drills"]
            ]
            result = DrillResult(drill=drill.name, breaks=drill.breaks, declared=declared)
            result.control = pick_control(drills, drill.name, functions)
            if not declared:
                result.status, result.detail = UNGUARDED, "no journey that applies to the target declares it"
            results.append(result)
        run.results = results
        for function in run.undeclared:
            say(f"journey {function} declares no drill of {target.name}")

        # -- baseline: the unpatched copy passes everything the drills will be judged by --------
        guarded = [r for r in results if r.status != UNGUARDED]
        baseline_ids = list(
            dict.fromkeys(f for r in guarded for f in ([r.control] if r.control else []) + r.declared)
        )
        if baseline_ids:
            say(f"baseline: {len(baseline_ids)} journey test(s) on the unpatched {target.title} ...")
            out = work / "baseline.json"
            report_path.parent.mkdir(parents=True, exist_ok=True)
            argv = _pytest_argv(
                target,
                baseline_ids,
                ["--prove-out", str(out), f"--html={report_path}", "--self-contained-html"],
            )
            with scratch_copy(drills) as root:
                code, run.baseline_seconds = run_pytest(
                    argv, env={**os.environ, **source_root_env(root)}, log=log_dir / "baseline.log"
                )
            entries = _read_json(out)
            outcomes: dict[str, str] = {}
            for entry in entries:
                function = entry["function"]
                outcomes[function] = merge_outcome(outcomes.get(function), entry.get("outcome") or "not run")
            run.baseline = {f: outcomes.get(f, "not run") for f in baseline_ids}
            if code is None:
                run.baseline = {f: o if o != "passed" else "timed out" for f, o in run.baseline.items()}
            say(
                f"baseline: {'passed' if run.baseline_ok else 'FAILED'} in {run.baseline_seconds:.0f} s"
                + ("" if run.baseline_ok else f" (log {log_dir / 'baseline.log'})")
            )

        # -- drills ------------------------------------------------------------------------
        if run.baseline_ok:
            for i, (drill, result) in enumerate(zip(chosen, results, strict=True), 1):
                if result.status == UNGUARDED:
                    say(f"[{i}/{len(chosen)}] {drill.name}: {UNGUARDED} ({result.detail})")
                    continue
                ids = ([result.control] if result.control else []) + result.declared
                out = work / f"{drill.name}.json"
                log = log_dir / f"{drill.name}.log"
                argv = _pytest_argv(target, ids, ["-x", "--prove-out", str(out)])
                with scratch_copy(drills, drill) as root:
                    code, result.seconds = run_pytest(
                        argv, env={**os.environ, **source_root_env(root)}, log=log
                    )
                result.log = str(log)
                classify(result, _read_json(out), code, log)
                where = (
                    f" by {result.caught_by} at {result.step or 'no step'}" if result.status == CAUGHT else ""
                )
                detail = f": {result.detail}" if result.detail and result.status != CAUGHT else ""
                say(
                    f"[{i}/{len(chosen)}] {drill.name}: {result.status}{where}{detail} ({result.seconds:.0f} s)"
                )
        else:
            for result in results:
                if result.status != UNGUARDED:
                    result.status = NOT_RUN
    run.wall_seconds = time.monotonic() - t0
    run.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    return run


def write_outputs(run: ProveRun, report_path: Path, json_path: Path) -> None:
    """The run as JSON, and its Detection section into the HTML report (written by the baseline)."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(run.to_json())
    section = report.detection_html(run)
    if report_path.is_file():
        text = report_path.read_text()
        if report.DETECTION_START in text:
            report_path.write_text(report.replace_detection(text, section))
            return
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Throughline: detection</title></head>"
        f"<body><h1>Throughline prove on {report.esc(run.target)}</h1>{section}</body></html>"
    )


# -- command line -----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only these drills (repeat, or a comma list)",
    )
    parser.add_argument(
        "--report",
        default=str(DEFAULT_REPORT),
        help=f"the HTML report with the Detection section (default {DEFAULT_REPORT}; JSON beside it)",
    )


def main(args: argparse.Namespace) -> int:
    """`throughline prove`; 0 when every drill was caught, 1 when not, 2 on bad input."""
    try:
        target = load_target(getattr(args, "target", None))
        declaration_of(target)
    except (TargetError, DeclarationError) as exc:
        print(f"throughline: {exc}", file=sys.stderr)
        return 2
    if target.is_external:
        print(
            f"throughline: target '{target.name}' runs elsewhere; prove needs a target it starts "
            "(it runs the platform from a patched copy)",
            file=sys.stderr,
        )
        return 2
    only = [n.strip() for value in args.only for n in value.split(",") if n.strip()]
    report_path = Path(args.report)
    json_path = report_path.with_suffix(".json")
    log_dir = report_path.parent / (report_path.stem + "-logs")
    try:
        run = prove(target, only=only, report_path=report_path, log_dir=log_dir)
    except ProveError as exc:
        print(f"throughline prove: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("throughline prove: interrupted; the running journeys were stopped", file=sys.stderr)
        return 130
    write_outputs(run, report_path, json_path)
    print()
    print(render_matrix(run))
    print()
    print(f"{run.verdict()}; wall time {run.wall_seconds:.0f} s (baseline {run.baseline_seconds:.0f} s)")
    print(f"report: {report_path} (Detection section), {json_path}; logs: {log_dir}/")
    return 0 if run.ok else 1


__all__ = ["ProveError", "classify", "main", "prove", "write_outputs"]
