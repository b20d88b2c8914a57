"""The world under test, built from the target's declaration (its services.toml).

`Stack` gives every declared service a free port up front, wires the platform's environment and
the exported addresses from the declaration's templates, starts the services level by level
(depends_on; each level in parallel), knows every URL, can stop, kill and restart any of them
(fault journeys: `outage`, `arestart`), hands out log tails, and takes everything down again.
A target without a services file (external) starts nothing: its addresses come from the
environment variables its target.toml [external] table names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import signal
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harness import platform_coverage
from harness.declaration import (
    GLOBAL_NAMES,
    Declaration,
    DeclarationError,
    ServiceDecl,
    display_path,
    export_env_name,
    load_declaration,
    render,
    template_refs,
)
from harness.drills import SOURCE_ROOT_ENV
from harness.process import (
    ManagedProcess,
    ProcessSpec,
    ReadyCheck,
    ServiceStartError,
    free_port,
    http_ready,
    log_ready,
    tail,
    tcp_ready,
)
from harness.rundirs import PREFIX, mark_owner, remove_run_dir
from harness.services.blocks import BlockRun
from harness.target import DEFAULT_TARGET, PROJECT_TARGETS, Target, load_target

__all__ = [
    "ALL",
    "APPS",
    "ENV_NAMES",
    "EXTERNALS",
    "INFRA",
    "PLATFORM_DEFAULTS",
    "STAND_INS",
    "DeclarationError",
    "Service",
    "ServiceNotControllable",
    "ServiceNotRestartable",
    "Stack",
    "declaration_of",
    "iter_env_lines",
    "load_state",
    "parse_only",
    "pid_alive",
    "state_file",
    "stop_detached",
]

PROJECT = Path(__file__).resolve().parent.parent
REFERENCE_SERVICES = PROJECT_TARGETS / DEFAULT_TARGET / "services.toml"
_REFERENCE = load_declaration(REFERENCE_SERVICES)

# The reference platform's names and knob defaults, as values, for callers older than declarations.
ALL = _REFERENCE.names()
INFRA = _REFERENCE.names("store")
EXTERNALS = _REFERENCE.names("stand-in")
APPS = _REFERENCE.names("app")
STAND_INS = {name: _REFERENCE.services[name].third_party for name in EXTERNALS}
ENV_NAMES = {key: export_env_name(key) for key in _REFERENCE.exports}
PLATFORM_DEFAULTS = _REFERENCE.knob_env(_REFERENCE.knobs)


class ServiceNotControllable(LookupError):
    """A journey asked to stop/kill/restart a service that Throughline does not run (external mode)."""


class ServiceNotRestartable(ServiceNotControllable):
    """A journey asked to stop/kill/restart a service its declaration marks `restartable = false`."""

    def __init__(self, name: str, declared_in: Path | None) -> None:
        where = display_path(declared_in) if declared_in else "its declaration"
        super().__init__(
            f"service '{name}' cannot be stopped or restarted: {where} declares it restartable = false"
        )


def state_file() -> Path:
    """Where a detached stack is remembered (`throughline stack status|down|env`)."""
    base = os.environ.get("THROUGHLINE_STATE_DIR") or os.path.join(os.getcwd(), ".throughline")
    return Path(base) / "stack.json"


def declaration_of(target: Target) -> Declaration | None:
    """The target's validated services.toml (None for an external target); its [knobs] checked too."""
    if target.services_file is None:
        return None
    declaration = load_declaration(target.services_file)
    declaration.check_knob_overrides(target.knobs, display_path(target.folder / "target.toml"))
    return declaration


@dataclass
class Service:
    """One running service of the stack."""

    name: str
    process: ManagedProcess
    url: str
    restartable: bool = True
    declared_in: Path | None = None

    def check_controllable(self) -> None:
        """ServiceNotRestartable when the declaration forbids stopping this service."""
        if not self.restartable:
            raise ServiceNotRestartable(self.name, self.declared_in)

    def kill(self) -> None:
        """SIGKILL, as a crash (the UI must notice)."""
        self.check_controllable()
        self.process.kill()

    def stop(self) -> None:
        """Graceful stop of the service's process group."""
        self.check_controllable()
        self.process.stop()

    def start(self) -> float:
        """Start again (same port, same environment) and wait until ready; seconds to ready."""
        self.process.start()
        return self.process.wait_ready()

    async def astart(self) -> float:
        """start() for async code: spawn on this thread (PDEATHSIG is tied to the spawning thread),
        wait for readiness in a worker so the event loop (browser, recorders) keeps running."""
        self.process.start()
        return await asyncio.to_thread(self.process.wait_ready)

    def restart(self) -> float:
        """Graceful stop, start on the same port, wait until ready; seconds to ready."""
        self.check_controllable()
        return self.process.restart()

    async def astop(self, *, kill: bool = False) -> None:
        """stop() (or kill()) for async code: the wait for the process to end runs in a worker."""
        self.check_controllable()
        await asyncio.to_thread(self.process.kill if kill else self.process.stop)

    async def arestart(self) -> float:
        """restart() for async code: stop and port wait in a worker, spawn here, readiness in a worker."""
        await self.astop()
        await asyncio.to_thread(self.process.wait_port_released)
        return await self.astart()

    @property
    def is_running(self) -> bool:
        return self.process.is_running()


@dataclass
class Stack:
    """The whole platform of one target; `with Stack() as s:` or `start()`/`stop()`."""

    only: tuple[str, ...] | None = None  # a subset (depends_on is added); None: every declared service
    run_dir: Path | None = None
    keep_run_dir: bool = False
    die_with_parent: bool = True
    external: bool = False
    urls: dict[str, str] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    seed_data: dict[str, Any] = field(default_factory=dict)  # what the seed hook made (an admin account)
    platform_env: dict[str, str] = field(default_factory=dict)
    target: Target | None = None  # None: the reference platform
    declaration: Declaration | None = None  # None: the target's services file
    ports: dict[str, int] = field(default_factory=dict)  # every declared service's main port
    # Where the platform's own code is imported from ({source_root}); None: THROUGHLINE_SOURCE_ROOT,
    # else the project. `throughline prove` points it at a scratch copy with one drill applied.
    source_root: Path | None = None
    # --platform-coverage: every Python app service runs under coverage.py, its data in
    # <coverage_dir>/<service>/ (harness/platform_coverage.py); None: not measured.
    coverage_dir: Path | None = None
    unmeasured: dict[str, str] = field(default_factory=dict)  # app service -> why it is not measured
    _owns_run_dir: bool = False
    _prepared: bool = field(default=False, repr=False)
    _selected: tuple[str, ...] = field(default=(), repr=False)
    _replaced: dict[str, str] = field(default_factory=dict, repr=False)
    _extra_ports: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    _runs: dict[str, BlockRun] = field(default_factory=dict, repr=False)
    _service_urls: dict[str, str] = field(default_factory=dict, repr=False)
    _secrets: dict[str, str] = field(default_factory=dict, repr=False)
    _knobs: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.external:
            return
        if self.declaration is None:
            if self.target is None:
                self.target = load_target(DEFAULT_TARGET)
            self.declaration = declaration_of(self.target)
            if self.declaration is None:
                raise DeclarationError(
                    f"target '{self.target.name}' has no services file; use Stack.for_target() for it"
                )
        if self.only is not None:
            self.only = tuple(self.only)
            self.declaration.closure(self.only)  # unknown names fail here, before anything starts

    # -- construction --------------------------------------------------------
    @classmethod
    def for_target(
        cls,
        target: Target,
        *,
        only: tuple[str, ...] | None = None,
        run_dir: Path | None = None,
        keep_run_dir: bool = False,
        die_with_parent: bool = True,
        coverage_dir: Path | None = None,
    ) -> Stack:
        """The stack of `target`: started from its services file, or external (addresses from the environment)."""
        if target.is_external:
            return cls._external(target)
        return cls(
            target=target,
            only=only,
            run_dir=run_dir,
            keep_run_dir=keep_run_dir,
            die_with_parent=die_with_parent,
            coverage_dir=coverage_dir,
        )

    @classmethod
    def from_environment(cls, **kwargs: object) -> Stack:
        """The stack of THROUGHLINE_TARGET (default: the reference platform)."""
        return cls.for_target(load_target(None), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def _external(cls, target: Target) -> Stack:
        names = target.external_urls
        urls = {key: os.environ[var] for key, var in names.items() if os.environ.get(var)}
        missing = [var for key, var in names.items() if key not in urls]
        if missing:
            raise ServiceStartError(
                "stack",
                f"THROUGHLINE_TARGET={target.name} runs elsewhere, but these are not set: "
                + ", ".join(missing),
                hint="export them (see `throughline stack env` of a running stack)",
            )
        return cls(external=True, urls=urls, target=target)

    @property
    def _decl(self) -> Declaration:
        assert self.declaration is not None, "an external stack has no declaration"
        return self.declaration

    # -- wiring --------------------------------------------------------------
    def prepare(self) -> Stack:
        """Choose the run directory and every port, wire the environment and the exports; start nothing."""
        if self.external or self._prepared:
            return self
        decl = self._decl
        if self.source_root is None and os.environ.get(SOURCE_ROOT_ENV):
            self.source_root = Path(os.environ[SOURCE_ROOT_ENV]).resolve()
        if self.run_dir is None:
            # A kept dir (--keep-run-dir, a detached stack) carries no owner marker: no sweep takes it.
            self.run_dir = Path(tempfile.mkdtemp(prefix=PREFIX))
            if not self.keep_run_dir:
                mark_owner(self.run_dir)
            self._owns_run_dir = True
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o755)  # an unprivileged store user (postgres) must reach its data dir
        self._selected = decl.closure(self.only if self.only is not None else decl.names())
        for name in self._selected:
            block = decl.services[name].block
            server = block.replaced_by() if block is not None else None
            if server:
                self._replaced[name] = server
        # Every declared service gets its ports now, so a reference never depends on start order.
        for name, svc in decl.services.items():
            if name in self._replaced:
                self.ports[name] = urlsplit(self._replaced[name]).port or 0
                self._extra_ports[name] = {}
                continue
            self.ports[name] = free_port()
            self._extra_ports[name] = {port: free_port() for port in svc.extra_ports}
            if svc.block is not None:
                self._runs[name] = BlockRun(
                    service=name,
                    run_dir=self.run_dir,
                    port=self.ports[name],
                    ports=self._extra_ports[name],
                    options=svc.options,
                    project=PROJECT,
                )
        self._secrets = {name: secrets.token_urlsafe(size) for name, size in decl.secrets.items()}
        self._knobs = decl.knob_values(self.target.knobs if self.target else None)
        for name, svc in decl.services.items():
            if name in self._replaced:
                self._service_urls[name] = self._replaced[name]
            elif svc.block is not None:
                self._service_urls[name] = svc.block.url(self._runs[name])
            else:
                self._service_urls[name] = self._render(svc.url or "http://127.0.0.1:{port}", name)
        env = decl.knob_env(self._knobs)
        env.update(self._render_present(decl.env))
        if self.source_root is not None:
            # First on the import path: an installed package's scratch copy shadows the installed one.
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.source_root), env.get("PYTHONPATH") or os.environ.get("PYTHONPATH")) if p
            )
        self.platform_env = env
        self.urls = self._render_present(decl.exports)
        self._prepared = True
        return self

    def _render(self, template: str, own: str | None) -> str:
        return render(template, lambda ref: self._resolve(ref, own))

    def _render_present(self, templates: Mapping[str, str]) -> dict[str, str]:
        # An entry that names a service outside this run (--only) is left out, as if undeclared.
        selected = set(self._selected)
        out: dict[str, str] = {}
        for key, template in templates.items():
            heads = {ref.split(".")[0] for ref in template_refs(template)}
            if all(h in selected for h in heads if h in self._decl.services):
                out[key] = self._render(template, None)
        return out

    def _resolve(self, ref: str, own: str | None) -> str:
        parts = ref.split(".")
        head, rest = parts[0], parts[1:]
        if head in GLOBAL_NAMES:
            assert self.run_dir is not None
            return {
                "run_dir": str(self.run_dir),
                "python": sys.executable,
                "project": str(PROJECT),
                "target_dir": str(self._decl.folder),
                "source_root": str(self.source_root or PROJECT),
            }[head]
        if head == "secret":
            return self._secrets[rest[0]]
        if head == "knob":
            return self._knobs[rest[0]]
        if head in ("port", "ports"):
            assert own is not None, "the declaration allows {port} only inside a service"
            head, rest = own, parts
        if rest == ["port"]:
            return str(self.ports[head])
        if rest == ["url"]:
            return self._service_urls[head]
        if rest[0] == "ports":
            return str(self._extra_ports[head][rest[1]])
        block = self._decl.services[head].block
        assert block is not None, f"the declaration checked {{{ref}}}"
        return block.name_value(self._runs[head], rest[0], rest[1])

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> Stack:
        """Start every selected service, level by level; on any failure stop what started and raise."""
        if self.external:
            return self
        t0 = time.monotonic()
        try:
            self.prepare()
            to_start = [n for n in self._selected if n not in self._replaced]
            for level in self._decl.levels(to_start):
                self._start_group([self._spec(name) for name in level])
            self._seed()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def _seed(self) -> None:
        """The target's seed hook (its admin account, its settings) once the whole platform is up."""
        if self.target is None or self.target.seed is None or set(self._selected) != set(self._decl.names()):
            return
        t0 = time.monotonic()
        seed = self.target.seed_function()
        try:
            seed(self)
        except Exception as exc:
            raise ServiceStartError(
                "seed",
                f"the target's seed hook {self.target.seed} failed: {type(exc).__name__}: {exc}",
                hint="the services started; read their log tails in the run directory's logs/",
            ) from exc
        self.timings["seed"] = time.monotonic() - t0

    def _spec(self, name: str) -> ProcessSpec:
        svc = self._decl.services[name]
        if svc.block is not None:
            spec = svc.block.spec(self._runs[name])
        else:
            argv = [self._render(arg, name) for arg in svc.command]
            cwd = Path(self._render(svc.cwd, name)) if svc.cwd else self._decl.folder
            spec = ProcessSpec(
                name=name,
                argv=argv,
                port=self.ports[name],
                cwd=cwd,
                hint=f"run `{shlex.join(argv)}` by hand in {cwd} with the [env] of "
                f"{display_path(self._decl.path)} to see the error",
            )
        if svc.block is None or svc.timeout is not None:
            spec.startup_timeout = svc.startup_timeout
        if svc.hint:
            spec.hint = self._render(svc.hint, name)
        ready = svc.ready
        if ready is not None and ready.kind != "log":
            spec.ready = self._ready_check(svc, ready.kind, ready.value)
        elif ready is None and svc.block is None:
            spec.ready = tcp_ready(self.ports[name])
        env: dict[str, str] = self.platform_env if svc.gets_platform_env else {}
        if svc.env:
            env = {**env, **{var: self._render(text, name) for var, text in svc.env.items()}}
        # Shared, not copied, when there is nothing to add: a restart sees later platform_env changes.
        spec.env = env
        if self.coverage_dir is not None and svc.kind == "app":
            spec.argv = self._measured(svc, spec)
        return spec

    def _measured(self, svc: ServiceDecl, spec: ProcessSpec) -> list[str]:
        """The service's argv under coverage.py, writing into its coverage folder; as is if it cannot be."""
        assert self.coverage_dir is not None
        argv = list(spec.argv)
        packages = platform_coverage.measured_packages(svc)
        python = platform_coverage.interpreter_of(argv[0])
        if not packages or python is None:
            self.unmeasured[svc.name] = (
                f"not a Python program: {argv[0]}"
                if python is None
                else "no packages (declare `coverage = [...]`)"
            )
            return argv
        folders = platform_coverage.package_folders(python, packages, spec.cwd or self._decl.folder, spec.env)
        rcfile = platform_coverage.write_rcfile(self.coverage_dir / svc.name, packages, folders)
        return platform_coverage.wrap_command(argv, rcfile) or argv

    def _ready_check(self, svc: ServiceDecl, kind: str, value: str) -> ReadyCheck:
        if kind == "http":
            return http_ready(self._render(value, svc.name))
        if kind == "tcp":
            return tcp_ready(self.ports[svc.name])
        assert kind == "query" and svc.block is not None
        return svc.block.query_ready(self._runs[svc.name], value)

    def _start_group(self, specs: list[ProcessSpec]) -> None:
        # Spawn from this thread (PDEATHSIG is tied to the spawning thread), then wait in parallel.
        started: list[ManagedProcess] = []
        for spec in specs:
            svc = self._decl.services[spec.name]
            proc = ManagedProcess(spec, self.log_dir, die_with_parent=self.die_with_parent)
            if svc.ready is not None and svc.ready.kind == "log":
                spec.ready = log_ready(proc, svc.ready.value)
            self.services[spec.name] = Service(
                spec.name,
                proc,
                self._service_urls[spec.name],
                restartable=svc.restartable,
                declared_in=self._decl.path,
            )
            proc.start()
            started.append(proc)
        errors: list[BaseException] = []

        def wait(proc: ManagedProcess) -> None:
            try:
                self.timings[proc.spec.name] = proc.wait_ready()
            except BaseException as exc:  # collected and re-raised in the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=wait, args=(p,), daemon=True) for p in started]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]

    def stop(self) -> None:
        """Stop every service (reverse order) and remove the run dir unless asked to keep it."""
        for name in reversed(list(self.services)):
            with contextlib.suppress(Exception):
                self.services[name].process.stop()
        if self._owns_run_dir and not self.keep_run_dir and self.run_dir is not None:
            remove_run_dir(self.run_dir)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults --------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def outage(self, name: str, *, kill: bool = False) -> AsyncIterator[None]:
        """`async with stack.outage(name):` down inside (kill=True: SIGKILL), back on its port and ready after."""
        service = self.service(name)
        await service.astop(kill=kill)
        try:
            yield
        finally:
            if not service.is_running:
                await asyncio.to_thread(service.process.wait_port_released)
                await service.astart()

    async def arestart(self, name: str) -> float:
        """Graceful restart of a service off the event loop; seconds until it is ready again."""
        return await self.service(name).arestart()

    # -- queries -------------------------------------------------------------
    @property
    def log_dir(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "logs"

    def service(self, name: str) -> Service:
        """The running service `name` (ServiceNotControllable in external mode)."""
        if self.external:
            target = self.target.name if self.target else "external"
            raise ServiceNotControllable(
                f"service '{name}' cannot be stopped or restarted: THROUGHLINE_TARGET={target}, so Throughline "
                "does not run it (run against a target Throughline starts to exercise this fault)"
            )
        try:
            return self.services[name]
        except KeyError:
            raise LookupError(
                f"no service '{name}' in this stack (have: {', '.join(self.services)})"
            ) from None

    def log_tails(self, lines: int = 30) -> dict[str, str]:
        return {name: tail(svc.process.log_file, lines) for name, svc in self.services.items()}

    def env(self) -> dict[str, str]:
        """THROUGHLINE_* variables a client (probes, pages, another shell) needs."""
        if self.external and self.target is not None:
            names = self.target.external_urls
            return {names[key]: value for key, value in self.urls.items() if key in names}
        return export_env(self.urls)

    def component_kinds(self) -> dict[str, str]:
        """Each service: 'real' or 'stand-in: <what>' (for the report's real-vs-stand-in ratio)."""
        if self.external:
            declaration = _declaration_behind(self.target) if self.target else _REFERENCE
            return declaration.component_kinds() if declaration else {}
        return self._decl.component_kinds(self.services)

    def status(self) -> dict[str, dict[str, object]]:
        return {
            name: {
                "pid": svc.process.pid,
                "running": svc.is_running,
                "url": svc.url,
                "ready_s": round(svc.process.ready_seconds or 0.0, 3),
            }
            for name, svc in self.services.items()
        }

    # -- detached stacks -----------------------------------------------------
    def save_state(self, path: Path | None = None) -> Path:
        path = path or state_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "target": self.target.name if self.target else DEFAULT_TARGET,
            "run_dir": str(self.run_dir),
            "urls": self.urls,
            "owns_run_dir": self._owns_run_dir,
            "services": {
                n: {
                    "pid": s.process.pid,
                    "url": s.url,
                    "log": str(s.process.log_file),
                    "stop_signal": int(s.process.spec.stop_signal),
                }
                for n, s in self.services.items()
            },
        }
        path.write_text(json.dumps(data, indent=2))
        return path


def _declaration_behind(target: Target) -> Declaration | None:
    """The services file of an external target's `extends` chain (what runs elsewhere), if any."""
    seen: set[str] = set()
    while target.services_file is None:
        with open(target.folder / "target.toml", "rb") as fh:
            parent = tomllib.load(fh).get("extends")
        if not isinstance(parent, str) or parent in seen:
            return None
        seen.add(parent)
        target = load_target(parent)
    return load_declaration(target.services_file)


def export_env(urls: Mapping[str, str]) -> dict[str, str]:
    """The exports as `throughline stack env` prints them: THROUGHLINE_<KEY>=value."""
    return {export_env_name(key): value for key, value in urls.items()}


def load_state(path: Path | None = None) -> dict[str, object] | None:
    path = path or state_file()
    if not path.exists():
        return None
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_detached(state: dict[str, object], timeout: float = 10.0) -> list[str]:
    """Stop a detached stack from its state file: each process group its stop signal, KILL stragglers."""
    services: dict[str, dict[str, object]] = state["services"]  # type: ignore[assignment]
    pids = {name: int(info["pid"]) for name, info in services.items()}  # type: ignore[call-overload]
    for name in reversed(list(pids)):
        # State files written before stop_signal was recorded: postgres wanted SIGINT (fast shutdown).
        default = signal.SIGINT if name == "postgres" else signal.SIGTERM
        sig = int(services[name].get("stop_signal", default))  # type: ignore[call-overload]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pids[name], sig)
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)  # bounded wait for processes that are not our children
    killed = []
    for name, pid in pids.items():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
            killed.append(name)
    if state.get("owns_run_dir") and state.get("run_dir"):
        remove_run_dir(Path(str(state["run_dir"])))
    return killed


def iter_env_lines(env: dict[str, str]) -> Iterator[str]:
    for name, value in env.items():
        yield f"export {name}={value}"


def parse_only(value: str | None, declaration: Declaration | None = None) -> tuple[str, ...]:
    """'all', 'infra' (the stores), 'externals' (the stand-ins) or a comma list -> names in declaration order."""
    decl = declaration or _REFERENCE
    names = decl.names()
    if not value or value == "all":
        return names
    wanted: set[str] = set()
    for part in value.split(","):
        part = part.strip()
        if part == "infra":
            wanted.update(decl.names("store"))
        elif part == "externals":
            wanted.update(decl.names("stand-in"))
        elif part in names:
            wanted.add(part)
        else:
            raise ValueError(f"unknown service '{part}' (known: infra, externals, {', '.join(names)})")
    return tuple(n for n in names if n in wanted)
