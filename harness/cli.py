"""`throughline`: stack up|down|status|env, run, doctor."""

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

from harness.process import ServiceStartError
from harness.stack import (
    Stack,
    iter_env_lines,
    load_state,
    parse_only,
    pid_alive,
    state_file,
    stop_detached,
)


def _print_urls(stack: Stack) -> None:
    people = [
        ("Frontend (open this)", "frontend_url"),
        ("Auth", "auth_url"),
        ("Backend", "backend_url"),
        ("WebSocket", "ws_url"),
        ("Mail sink", "smtp_sink_url"),
        ("OIDC provider", "oidc_url"),
        ("LLM stand-in", "llm_url"),
        ("ClickHouse", "clickhouse_url"),
        ("Redis", "redis_url"),
        ("PostgreSQL auth", "auth_dsn"),
        ("PostgreSQL backend", "backend_dsn"),
    ]
    for label, key in people:
        if key in stack.urls:
            print(f"  {label:<22} {stack.urls[key]}")


def cmd_stack_up(args: argparse.Namespace) -> int:
    existing = load_state()
    services: dict[str, dict[str, object]] = existing["services"] if existing else {}  # type: ignore[assignment]
    if any(pid_alive(int(str(s["pid"]))) for s in services.values()):
        print(
            f"a stack is already up (state in {state_file()}); `throughline stack down` first",
            file=sys.stderr,
        )
        return 1
    try:
        only = parse_only(args.only)
    except ValueError as exc:
        print(f"throughline: {exc}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir).resolve() if args.run_dir else None
    stack = Stack(only=only, run_dir=run_dir, die_with_parent=not args.detach, keep_run_dir=args.detach)
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
    print(f"stack healthy in {stack.timings['total']:.2f} s (run dir {stack.run_dir})")
    for name in stack.services:
        print(f"  {name:<11} ready in {stack.timings.get(name, 0):.2f} s")
    _print_urls(stack)
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
    state = load_state()
    if state is None:
        print(f"no stack is up (no state file at {state_file()})")
        return 0
    killed = stop_detached(state)
    state_file().unlink(missing_ok=True)
    print("stack down" + (f" (had to SIGKILL: {', '.join(killed)})" if killed else ""))
    return 0


def cmd_stack_status(args: argparse.Namespace) -> int:
    state = load_state()
    if state is None:
        print("no stack is up")
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
    state = load_state()
    if state is None:
        print("no stack is up; `throughline stack up --detach` first", file=sys.stderr)
        return 1
    stack = Stack(urls=state["urls"])  # type: ignore[arg-type]
    for line in iter_env_lines(stack.env()):
        print(line)
    return 0


def doctor_checks() -> list[tuple[str, bool, str]]:
    """(what, ok, detail-or-fix) for everything a run needs."""
    from harness.services.postgres import find_bin_dir

    checks: list[tuple[str, bool, str]] = []
    try:
        checks.append(("PostgreSQL server", True, str(find_bin_dir())))
    except ServiceStartError as exc:
        checks.append(("PostgreSQL server", False, exc.hint))
    redis = shutil.which("redis-server")
    checks.append(("redis-server", bool(redis), redis or "apt-get install redis-server"))
    for module, fix in (
        ("chdb", "pip install chdb"),
        ("clickhouse_connect", "pip install clickhouse-connect"),
        ("playwright", "pip install playwright"),
        ("asyncpg", "pip install asyncpg"),
        ("fastapi", "pip install fastapi"),
    ):
        found = importlib.util.find_spec(module) is not None
        checks.append((f"python: {module}", found, "installed" if found else fix))
    try:
        from harness.browser import load_settings, resolve_chromium_executable

        exe, where = resolve_chromium_executable(load_settings(), None)
        checks.append(("Chromium", True, where))
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        checks.append(("Chromium", False, f"{exc} (apt-get install chromium, or set THROUGHLINE_CHROMIUM)"))
    if os.geteuid() == 0:
        from harness.process import unprivileged_user

        try:
            user = unprivileged_user()
            checks.append(("unprivileged user for PostgreSQL", True, user.pw_name if user else "-"))
        except RuntimeError as exc:
            checks.append(("unprivileged user for PostgreSQL", False, str(exc)))
    return checks


def cmd_doctor(args: argparse.Namespace) -> int:
    ok_all = True
    for what, ok, detail in doctor_checks():
        ok_all &= ok
        print(f"  {'ok     ' if ok else 'MISSING'} {what:<34} {detail}")
    print("everything is in place" if ok_all else "something is missing: `make e2e` installs it")
    return 0 if ok_all else 1


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    argv = [sys.executable, "-m", "pytest", "journeys"]
    if args.headed:
        argv.append("--headed")
    if args.slowmo:
        argv += ["--slowmo", str(args.slowmo)]
    if args.k:
        argv += ["-k", args.k]
    argv += extra
    return subprocess.call(argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="throughline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    stack = sub.add_parser("stack", help="start, inspect and stop the reference platform")
    stack_sub = stack.add_subparsers(dest="action", required=True)
    up = stack_sub.add_parser("up", help="start the stack (until Ctrl-C, or --detach)")
    up.add_argument("--detach", action="store_true", help="leave it running and return")
    up.add_argument("--only", default="all", help="infra, externals, or a comma list of services")
    up.add_argument("--run-dir", help="keep data and logs here instead of a temp dir")
    stack_sub.add_parser("down", help="stop a detached stack")
    status = stack_sub.add_parser("status", help="is each service of the detached stack alive")
    status.add_argument("--json", action="store_true")
    stack_sub.add_parser("env", help="print export lines for the detached stack")
    sub.add_parser("doctor", help="what is installed, what is missing, how to get it")
    run = sub.add_parser("run", help="run the journeys (extra args go to pytest)")
    run.add_argument("--headed", action="store_true")
    run.add_argument("--slowmo", type=int, default=0)
    run.add_argument("-k", default=None)
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":
        return cmd_run(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "doctor":
        return cmd_doctor(args)
    return {"up": cmd_stack_up, "down": cmd_stack_down, "status": cmd_stack_status, "env": cmd_stack_env}[
        args.action
    ](args)


if __name__ == "__main__":
    sys.exit(main())
