"""pytest plugin: the world (`stack`) and the probes of its stores.

Layers, like playwright-pytest: the stack is session-scoped (started once, torn down
at the end even on Ctrl-C or SIGTERM), probes are function-scoped and record every
answer into the test's data trail for the report.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from db_probes import ClickHouseProbe, PostgresProbe, ProbeRecord, RedisProbe
from harness.capabilities import NotApplicable, mark_not_applicable, not_applicable_reason
from harness.declaration import DeclarationError
from harness.plugin_coverage import coverage_dir_of
from harness.plugin_parallel import note_worker_stack
from harness.redact import redact, redact_file
from harness.rundirs import sweep_stale
from harness.stack import ServiceNotControllable, Stack, declaration_of, parse_only
from harness.target import Target, TargetError, load_target

TARGET_KEY = pytest.StashKey[Target]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("throughline", "Throughline stack")
    group.addoption(
        "--target",
        default=None,
        help="the platform under test: a target name (targets/<name>) or a target folder; "
        "env THROUGHLINE_TARGET; default: reference",
    )
    group.addoption(
        "--stack-only",
        default=os.environ.get("THROUGHLINE_STACK_ONLY", "all"),
        help="which services the local stack starts: all, infra, externals or a comma list",
    )
    group.addoption(
        "--keep-run-dir",
        action="store_true",
        default=False,
        help="keep the stack's run directory (data + logs) after the session",
    )


@pytest.hookimpl(trylast=True)  # after the terminal reporter exists
def pytest_configure(config: pytest.Config) -> None:
    try:
        target = load_target(config.getoption("--target", None))
        declaration_of(target)  # a bad services.toml fails here, before anything starts
    except (TargetError, DeclarationError) as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[TARGET_KEY] = target
    if not hasattr(config, "workerinput"):  # the controller sweeps; its xdist workers are live owners
        sweep_stale(say=_say)
    redact_terminal(config)

    # SIGTERM (CI cancelling a job) becomes an interrupt, so session fixtures tear the stack down.
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"received signal {signum}")

    if hasattr(signal, "SIGTERM"):
        try:
            signal.signal(signal.SIGTERM, on_term)
        except ValueError:  # not the main thread (pytester in-process)
            pass


def redact_terminal(config: pytest.Config) -> None:
    """Every text pytest writes to the terminal goes through harness.redact, once, here."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    writer = getattr(reporter, "_tw", None)
    if writer is None or getattr(writer, "_throughline_redacts", False):
        return
    write = writer.write

    def redacted_write(msg: str, *, flush: bool = False, **markup: bool) -> None:
        write(redact(msg), flush=flush, **markup)

    writer.write = redacted_write  # type: ignore[method-assign]
    writer._throughline_redacts = True  # type: ignore[attr-defined]


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """The run's output files redacted once, as written; then the run dirs dead owners left behind."""
    if hasattr(config, "workerinput"):
        return
    for option in ("xmlpath", "htmlpath"):
        path = getattr(config.option, option, None)
        if path:
            redact_file(Path(path))
    sweep_stale(say=_say)  # after the workers are gone: a dead worker's (or this run's) leftovers


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A test that finds the target cannot do what it checks ends "not applicable", not failed."""
    outcome = yield
    if call.excinfo is None:
        return
    error = call.excinfo.value
    if isinstance(error, NotApplicable):
        reason = error.reason
    elif isinstance(error, ServiceNotControllable):
        reason = not_applicable_reason(selected_target(item.config).name, ["service_control"], str(error))
    else:
        return
    mark_not_applicable(outcome.get_result(), (str(item.path), (item.location[1] or 0) + 1), reason)


def selected_target(config: pytest.Config) -> Target:
    """The target this session runs against (validated at configure time)."""
    return config.stash[TARGET_KEY]


@pytest.fixture(scope="session")
def target(pytestconfig: pytest.Config) -> Target:
    """The platform under test: its name, version, capabilities, defects and adapters."""
    return selected_target(pytestconfig)


@pytest.fixture(scope="session")
def stack_services(pytestconfig: pytest.Config, target: Target) -> tuple[str, ...]:
    """Names of the services the local stack starts (depends_on is added); override to trim the world."""
    declaration = declaration_of(target)
    if declaration is None:  # external: nothing is started
        return ()
    return parse_only(pytestconfig.getoption("--stack-only"), declaration)


@pytest.fixture(scope="session")
def stack(pytestconfig: pytest.Config, target: Target, stack_services: tuple[str, ...]) -> Iterator[Stack]:
    """The running platform of the target (started here from its services.toml; or external, from its variables)."""
    world = Stack.for_target(
        target,
        only=stack_services or None,
        keep_run_dir=bool(pytestconfig.getoption("--keep-run-dir")),
        coverage_dir=coverage_dir_of(pytestconfig),
    )
    world.start()
    note_worker_stack(pytestconfig, world.run_dir)
    _register_report_providers(world)
    try:
        yield world
    finally:
        world.stop()


def _register_report_providers(world: Stack) -> None:
    """Hand the report the service log tails and the real-vs-stand-in inventory, if the report is loaded."""
    try:
        from harness import report
    except ImportError:
        return
    register_logs = getattr(report, "register_log_tail_provider", None)
    if register_logs is not None and not world.external:
        register_logs(lambda: world.log_tails(40))
    register_env = getattr(report, "register_environment_provider", None)
    if register_env is not None:
        register_env(
            lambda: {
                "mode": "external" if world.external else "local",
                "components": world.component_kinds(),
                "run_dir": str(world.run_dir or ""),
            }
        )


@pytest.fixture
def probe_recorder(request: pytest.FixtureRequest) -> Callable[[ProbeRecord], None]:
    """Where probe answers go: the test's data trail when the browser layer provides one."""
    trail: Any = None
    if "data_trail" in request.fixturenames or _has_fixture(request, "data_trail"):
        trail = request.getfixturevalue("data_trail")

    def record(item: ProbeRecord) -> None:
        if trail is not None:
            trail.append((item.label, item.query, item.value))

    return record


def _has_fixture(request: pytest.FixtureRequest, name: str) -> bool:
    try:
        return bool(request._fixturemanager.getfixturedefs(name, request.node))
    except Exception:  # noqa: BLE001 - private API; absence is the safe answer
        return False


@dataclass
class PostgresProbes:
    """Both PostgreSQL databases of the platform."""

    auth: PostgresProbe
    backend: PostgresProbe


@pytest.fixture
async def pg(stack: Stack, probe_recorder: Callable[[ProbeRecord], None]) -> AsyncIterator[PostgresProbes]:
    """Read-only probes of the `auth` and `backend` databases."""
    probes = PostgresProbes(
        PostgresProbe(stack.urls["auth_dsn"], name="postgres/auth", recorder=probe_recorder),
        PostgresProbe(stack.urls["backend_dsn"], name="postgres/backend", recorder=probe_recorder),
    )
    yield probes
    await probes.auth.close()
    await probes.backend.close()


@pytest.fixture
async def ch(stack: Stack, probe_recorder: Callable[[ProbeRecord], None]) -> AsyncIterator[ClickHouseProbe]:
    """ClickHouse probe of the `analytics` database."""
    probe = ClickHouseProbe(stack.urls["clickhouse_url"], recorder=probe_recorder)
    yield probe
    await probe.close()


@pytest.fixture
async def redis(stack: Stack, probe_recorder: Callable[[ProbeRecord], None]) -> AsyncIterator[RedisProbe]:
    """Redis probe."""
    probe = RedisProbe(stack.urls["redis_url"], recorder=probe_recorder)
    yield probe
    await probe.close()
