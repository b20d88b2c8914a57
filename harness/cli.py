"""`throughline`: stack up|down|status|env, run, doctor, prove, report merge, durations."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from harness import platform_coverage
from harness import prove as prove_mod
from harness.browser import headed_display_error
from harness.ci import CiInputError, CiOptions, after_run, ci_options
from harness.declaration import DeclarationError
from harness.merge import merge_runs
from harness.plugin_parallel import ParallelError, durations_path, load_durations, parse_shard, parse_workers
from harness.process import ServiceStartError
from harness.results import ResultsError, RunResults, durations_of, find_results
from harness.rundirs import sweep_stale
from harness.stack import (
    PROJECT,
    Stack,
    declaration_of,
    export_env,
    iter_env_lines,
    load_state,
    parse_only,
    pid_alive,
    state_file,
    stop_detached,
)
from harness.target import Target, TargetError, load_target, selected_target_name


def _print_urls(urls: dict[str, str]) -> None:
    """Every address the target exports, in its declaration's order."""
    width = max((len(key) for key in urls), default=0) + 2
    for key, value in urls.items():
        print(f"  {key:<{width}} {value}")


def _target(args: argparse.Namespace) -> Target | None:
    """The --target (or THROUGHLINE_TARGET) target; None after printing why it cannot be used."""
    try:
        target = load_target(getattr(args, "target", None))
        declaration_of(target)  # a bad services.toml fails here, before anything starts
    except (TargetError, DeclarationError) as exc:
        print(f"throughline: {exc}", file=sys.stderr)
        return None
    return target


def _mismatch(state: dict[str, object], target: Target | None) -> bool:
    """True (after saying so) when the detached stack runs another target than --target."""
    if target is not None and state.get("target", target.name) != target.name:
        print(
            f"the stack that is up runs target '{state.get('target')}', not '{target.name}'", file=sys.stderr
        )
        return True
    return False


def cmd_stack_up(args: argparse.Namespace) -> int:
    target = _target(args)
    if target is None:
        return 2
    declaration = declaration_of(target)
    if declaration is None:
        print(
            f"throughline: target '{target.name}' runs elsewhere; there is nothing to start "
            "(its addresses come from the variables its target.toml [external] table names)",
            file=sys.stderr,
        )
        return 2
    existing = load_state()
    services: dict[str, dict[str, object]] = existing["services"] if existing else {}  # type: ignore[assignment]
    if any(pid_alive(int(str(s["pid"]))) for s in services.values()):
        print(
            f"a stack is already up (state in {state_file()}); `throughline stack down` first",
            file=sys.stderr,
        )
        return 1
    try:
        only = parse_only(args.only, declaration)
    except ValueError as exc:
        print(f"throughline: {exc}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir).resolve() if args.run_dir else None
    stack = Stack.for_target(
        target, only=only, run_dir=run_dir, die_with_parent=not args.detach, keep_run_dir=args.detach
    )
    stopping = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stopping.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        stack.start()
    except ServiceStartError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        stack.stop()
        return 130
    print(f"{target.title}: stack healthy in {stack.timings['total']:.2f} s (run dir {stack.run_dir})")
    for name in stack.services:
        print(f"  {name:<11} ready in {stack.timings.get(name, 0):.2f} s")
    _print_urls(stack.urls)
    if args.detach:
        stack._owns_run_dir = True  # `down` removes it
        path = stack.save_state()
        print(
            f"detached; state in {path}. `throughline stack env` prints the variables, "
            "`throughline stack down` stops it."
        )
        return 0
    stack.save_state()
    print("running; Ctrl-C stops everything")
    try:
        stopping.wait()
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping…")
        stack.stop()
        state_file().unlink(missing_ok=True)
    return 0


def cmd_stack_down(args: argparse.Namespace) -> int:
    target = _target(args) if args.target else None
    if args.target and target is None:
        return 2
    state = load_state()
    if state is None:
        print(f"no stack is up (no state file at {state_file()})")
        return 0
    if _mismatch(state, target):
        return 1
    killed = stop_detached(state)
    state_file().unlink(missing_ok=True)
    print("stack down" + (f" (had to SIGKILL: {', '.join(killed)})" if killed else ""))
    return 0


def cmd_stack_status(args: argparse.Namespace) -> int:
    target = _target(args) if args.target else None
    if args.target and target is None:
        return 2
    state = load_state()
    if state is None:
        print("no stack is up")
        return 1
    if _mismatch(state, target):
        return 1
    services: dict[str, dict[str, object]] = state["services"]  # type: ignore[assignment]
    all_up = True
    for name, info in services.items():
        alive = pid_alive(int(info["pid"]))  # type: ignore[call-overload]
        all_up &= alive
        print(f"  {name:<11} {'up  ' if alive else 'DOWN'} pid {info['pid']:<8} {info['url']}")
    if args.json:
        print(json.dumps(state, indent=2))
    return 0 if all_up else 1


def cmd_stack_env(args: argparse.Namespace) -> int:
    target = _target(args) if args.target else None
    if args.target and target is None:
        return 2
    state = load_state()
    if state is None:
        print("no stack is up; `throughline stack up --detach` first", file=sys.stderr)
        return 1
    if _mismatch(state, target):
        return 1
    for line in iter_env_lines(export_env(state["urls"])):  # type: ignore[arg-type]
        print(line)
    return 0


def doctor_checks(target: Target | None = None) -> list[tuple[str, bool, str]]:
    """(what, ok, detail-or-fix) for everything a run of `target` needs (default: the reference platform)."""
    target = target or load_target(selected_target_name(None))
    checks: list[tuple[str, bool, str]] = []
    declaration = declaration_of(target)
    for svc in declaration.services.values() if declaration else ():
        if svc.block is not None:
            checks += svc.block.doctor()
        elif svc.command[0] != "{python}":
            program = shutil.which(svc.command[0]) if "{" not in svc.command[0] else None
            checks.append((f"{svc.name}: {svc.command[0]}", bool(program), program or "not found on PATH"))
        elif svc.command[1:2] == ("-m",):
            module = svc.command[2]
            try:
                found = importlib.util.find_spec(module) is not None
            except ImportError:
                found = False
            checks.append(
                (f"{svc.name}: python -m {module}", found, "importable" if found else "not importable")
            )
    # What every run needs besides the target's services: the browser and the probes' clients.
    for module, fix in (
        ("playwright", "pip install playwright"),
        ("asyncpg", "pip install asyncpg"),
        ("clickhouse_connect", "pip install clickhouse-connect"),
    ):
        found = importlib.util.find_spec(module) is not None
        checks.append((f"python: {module}", found, "installed" if found else fix))
    try:
        from harness.browser import load_settings, resolve_chromium_executable

        exe, where = resolve_chromium_executable(load_settings(), None)
        checks.append(("Chromium", True, where))
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        checks.append(("Chromium", False, f"{exc} (apt-get install chromium, or set THROUGHLINE_CHROMIUM)"))
    return list({what: (what, ok, detail) for what, ok, detail in checks}.values())


def cmd_doctor(args: argparse.Namespace) -> int:
    target = _target(args)
    if target is None:
        return 2
    print(f"target {target.title} ({target.folder})")
    ok_all = True
    for what, ok, detail in doctor_checks(target):
        ok_all &= ok
        print(f"  {'ok     ' if ok else 'MISSING'} {what:<34} {detail}")
    print("everything is in place" if ok_all else "something is missing: `make e2e` installs it")
    return 0 if ok_all else 1


def _run_input_error(args: argparse.Namespace, target: Target) -> str | None:
    """Why -n / --shard / the durations file cannot be used, in one line; None when they can."""
    try:
        if args.workers is not None:
            parse_workers(args.workers)
        if args.shard is not None:
            parse_shard(args.shard)
            load_durations(durations_path(target.folder))
    except ParallelError as exc:
        return str(exc)
    return None


def _platform_coverage_error(target: Target) -> str | None:
    """Why --platform-coverage cannot measure this target, in one line; None when it can."""
    declaration = declaration_of(target)
    if declaration is None:
        return f"--platform-coverage: target '{target.name}' runs elsewhere; only a stack the harness starts can be measured"
    try:
        platform_coverage.check_declaration(declaration, {"python": sys.executable, "project": str(PROJECT)})
    except platform_coverage.PlatformCoverageError as exc:
        return str(exc)
    return None


def _has_path(extra: list[str]) -> bool:
    """True when the pytest arguments already name what to run (a file, folder or node id)."""
    return any(not a.startswith("-") and Path(a.split("::", 1)[0]).exists() for a in extra)


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    target = _target(args)
    if target is None:
        return 2
    error = _run_input_error(args, target)
    if error is None and args.platform_coverage:
        error = _platform_coverage_error(target)
    if error is not None:
        print(f"throughline: {error}", file=sys.stderr)
        return 2
    no_display = headed_display_error(args.headed, os.environ.get("THROUGHLINE_BROWSER_WS"))
    if no_display is not None:
        print(f"throughline: {no_display}", file=sys.stderr)
        return 2
    try:
        ci = ci_options(args.gate, args.notify, args.previous, args.summary)
    except CiInputError as exc:
        print(f"throughline: {exc}", file=sys.stderr)
        return 2
    if (ci.gates or ci.notify or ci.previous or ci.summary) and not args.reports:
        print("throughline: --gate, --notify, --previous and --summary need --reports DIR", file=sys.stderr)
        return 2
    argv = [sys.executable, "-m", "pytest"] + ([] if _has_path(extra) else ["journeys"])
    if args.target:
        argv += ["--target", args.target]
    if args.headed:
        argv.append("--headed")
    if args.slowmo:
        argv += ["--slowmo", str(args.slowmo)]
    if args.k:
        argv += ["-k", args.k]
    if args.workers is not None and parse_workers(args.workers) > 1:
        argv += ["-n", str(parse_workers(args.workers))]
    if args.shard:
        argv += ["--shard", args.shard]
    if args.reports:
        argv += ["--reports", args.reports]
    if args.platform_coverage:
        argv.append("--platform-coverage")
    argv += extra
    status = subprocess.call(argv)
    if not (ci.gates or ci.notify or ci.previous or ci.summary):
        return status
    gated = after_run(Path(args.reports) / "latest" / "results.json", ci, Path(args.reports))
    return status or gated


def cmd_report_merge(args: argparse.Namespace) -> int:
    try:
        merged = merge_runs([Path(p) for p in args.inputs], Path(args.out))
    except ResultsError as exc:
        print(f"throughline: {exc}", file=sys.stderr)
        return 2
    counts = merged.results.counts()
    tally = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    print(
        f"merged {len(merged.results.sources)} result file(s) of {merged.results.target}: "
        f"{len(merged.results.tests)} tests ({tally or 'none'})"
    )
    print(f"  report  {merged.report}\n  junit   {merged.junit}\n  results {merged.results_file}")
    return 1 if counts["failed"] else 0


def cmd_report_summary(args: argparse.Namespace) -> int:
    try:
        ci: CiOptions = ci_options(args.gate, args.notify, args.previous, True)
    except CiInputError as exc:
        print(f"throughline: {exc}", file=sys.stderr)
        return 2
    path = Path(args.results)
    if path.is_dir():
        path = path / "results.json"
    return after_run(path, ci, Path(args.reports) if args.reports else None)


def _add_ci_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--gate",
        action="append",
        default=None,
        help="a release gate, evaluated after the run: p0, supported, real>=80, coverage>=70, or "
        "default (p0,supported,real>=80); repeat or comma-separate",
    )
    command.add_argument(
        "--notify",
        default=None,
        help="Slack-compatible webhook URL for red runs and recovery; env THROUGHLINE_NOTIFY_URL",
    )
    command.add_argument(
        "--previous",
        default=None,
        help="the previous results (a results.json or run folder), or 'last': the newest other run in the reports dir",
    )


def cmd_durations(args: argparse.Namespace) -> int:
    target = _target(args)
    if target is None:
        return 2
    try:
        runs = [RunResults.load(p) for p in find_results([Path(p) for p in args.inputs])]
    except ResultsError as exc:
        print(f"throughline: {exc}", file=sys.stderr)
        return 2
    other = sorted({r.target for r in runs if r.target != target.name})
    if other:
        print(f"throughline: these results ran {', '.join(other)}, not {target.name}", file=sys.stderr)
        return 2
    durations = durations_of(runs)
    if not durations:
        print("throughline: no test in these results ran its body; nothing to record", file=sys.stderr)
        return 2
    path = durations_path(target.folder)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(durations, indent=1) + "\n")
    tmp.replace(path)
    print(f"recorded {len(durations)} test durations ({sum(durations.values()):.0f} s in all) in {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="throughline", description=__doc__)
    target_help = (
        "the platform: a target name (targets/<name>) or folder; env THROUGHLINE_TARGET; default reference"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    stack = sub.add_parser("stack", help="start, inspect and stop a target's platform")
    stack_sub = stack.add_subparsers(dest="action", required=True)
    up = stack_sub.add_parser("up", help="start the stack (until Ctrl-C, or --detach)")
    up.add_argument("--detach", action="store_true", help="leave it running and return")
    up.add_argument("--only", default="all", help="infra, externals, or a comma list of services")
    up.add_argument("--run-dir", help="keep data and logs here instead of a temp dir")
    down = stack_sub.add_parser("down", help="stop a detached stack")
    status = stack_sub.add_parser("status", help="is each service of the detached stack alive")
    status.add_argument("--json", action="store_true")
    env = stack_sub.add_parser("env", help="print export lines for the detached stack")
    doctor = sub.add_parser("doctor", help="what is installed, what is missing, how to get it")
    run = sub.add_parser("run", help="run the journeys (extra args go to pytest)")
    run.add_argument("--headed", action="store_true")
    run.add_argument("--slowmo", type=int, default=0)
    run.add_argument("-k", default=None)
    run.add_argument(
        "-n", "--workers", default=None, help="run N workers side by side, each with its own stack"
    )
    run.add_argument(
        "--shard", default=None, help="run shard i of n (i/n), balanced by the target's recorded durations"
    )
    run.add_argument(
        "--reports",
        default="reports",
        help="the run's report, JUnit, results and artifacts go to DIR/runs/<id>/; DIR/latest points "
        "at it (default: reports; '' for pytest's own options)",
    )
    run.add_argument(
        "--platform-coverage",
        action="store_true",
        help="run the platform's Python services under coverage.py; per-service figures in the report "
        "(docs/platform-coverage.md)",
    )
    _add_ci_arguments(run)
    run.add_argument("--summary", action="store_true", help="write the job summary after the run")
    report_cmd = sub.add_parser("report", help="release reports from results")
    report_sub = report_cmd.add_subparsers(dest="action", required=True)
    merge_cmd = report_sub.add_parser(
        "merge", help="one HTML report, JUnit and results.json from many shards or workers"
    )
    merge_cmd.add_argument("inputs", nargs="+", help="run folders (with results.json), or folders of them")
    merge_cmd.add_argument("--out", default="reports/merged", help="where the merged files go")
    summary_cmd = report_sub.add_parser(
        "summary", help="the Markdown job summary ($GITHUB_STEP_SUMMARY, else stdout), gates, trend, notify"
    )
    summary_cmd.add_argument(
        "results",
        nargs="?",
        default="reports/latest",
        help="a results.json or run folder (default reports/latest)",
    )
    summary_cmd.add_argument(
        "--reports", default=None, help="the reports dir holding runs/ (for --previous last)"
    )
    _add_ci_arguments(summary_cmd)
    durations = sub.add_parser(
        "durations",
        help="record the tests' durations from results, for --shard (targets/<name>/durations.json)",
    )
    durations.add_argument("inputs", nargs="+", help="run folders (with results.json), e.g. reports/latest")
    prove = sub.add_parser(
        "prove",
        help="break the platform on purpose, drill by drill, and show which journey catches each",
    )
    prove_mod.add_arguments(prove)
    for command in (up, down, status, env, doctor, run, prove, durations):
        command.add_argument("--target", default=None, help=target_help)
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":
        return cmd_run(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "prove" or (args.command == "stack" and args.action == "up"):
        sweep_stale(say=print)  # `run` starts pytest, whose plugin sweeps
    if args.command == "doctor":
        return cmd_doctor(args)
    if args.command == "prove":
        return prove_mod.main(args)
    if args.command == "report":
        return cmd_report_summary(args) if args.action == "summary" else cmd_report_merge(args)
    if args.command == "durations":
        return cmd_durations(args)
    return {"up": cmd_stack_up, "down": cmd_stack_down, "status": cmd_stack_status, "env": cmd_stack_env}[
        args.action
    ](args)


if __name__ == "__main__":
    sys.exit(main())
