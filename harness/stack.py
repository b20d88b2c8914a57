"""The world under test: stores, third-party stand-ins and the three app services.

`Stack` starts them in dependency order on free ports inside one run directory,
knows every URL, can kill and restart any of them (fault journeys), hands out
log tails, and takes everything down again. In external mode it starts nothing and
reads the URLs from THROUGHLINE_* variables instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.process import ManagedProcess, ProcessSpec, ServiceStartError, free_port, http_ready, tail
from harness.services import clickhouse as ch_service
from harness.services import postgres as pg_service
from harness.services import redis as redis_service

INFRA = ("postgres", "redis", "clickhouse")
EXTERNALS = ("llm", "oidc", "smtp")
APPS = ("auth", "backend", "frontend")
ALL = INFRA + EXTERNALS + APPS
# Which parts are ours (real) and which stand in for a third party.
STAND_INS = {"llm": "LLM provider (OpenAI-compatible)", "oidc": "OAuth/OIDC provider", "smtp": "email (SMTP)"}

# Environment names of `throughline stack env`, in print order.
ENV_NAMES = {
    "auth_dsn": "THROUGHLINE_AUTH_DSN",
    "backend_dsn": "THROUGHLINE_BACKEND_DSN",
    "clickhouse_url": "THROUGHLINE_CLICKHOUSE_URL",
    "redis_url": "THROUGHLINE_REDIS_URL",
    "frontend_url": "THROUGHLINE_FRONTEND_URL",
    "auth_url": "THROUGHLINE_AUTH_URL",
    "backend_url": "THROUGHLINE_BACKEND_URL",
    "ws_url": "THROUGHLINE_WS_URL",
    "llm_url": "THROUGHLINE_LLM_URL",
    "oidc_url": "THROUGHLINE_OIDC_URL",
    "smtp_sink_url": "THROUGHLINE_SMTP_SINK_URL",
}

# Test-friendly defaults of the platform's knobs (docs/wiring.md); THROUGHLINE_STACK_<NAME> overrides.
PLATFORM_DEFAULTS = {
    "TL_LLM_API_KEY": "sk-standin",
    "TL_LLM_MODEL": "standin-gpt",
    "TL_OIDC_PROVIDER": "acme",
    "TL_OIDC_PROVIDER_NAME": "Acme ID",
    "TL_OIDC_CLIENT_ID": "throughline-web",
    "TL_JWT_ISSUER": "throughline-auth",
    "TL_JWT_AUDIENCE": "throughline-api",
    "TL_ACCESS_TOKEN_TTL": "900",
    "TL_REFRESH_TOKEN_TTL": "2592000",
    "TL_RATE_HTTP_LIMIT": "100",
    "TL_RATE_HTTP_WINDOW": "10",
    "TL_RATE_WS_LIMIT": "8",
    # windows short enough that the rate-limit journey waits seconds, not minutes, for a reset
    "TL_RATE_WS_WINDOW": "6",
    "TL_RATE_AGENT_CONCURRENCY": "2",
    "TL_LOGIN_ATTEMPT_LIMIT": "5",
    "TL_LOGIN_ATTEMPT_WINDOW": "8",
    "TL_LLM_TIMEOUT": "5",
    # OWASP's minimum argon2id cost instead of argon2-cffi's default (64 MiB, t=3, p=4): still the
    # real algorithm, but a 2-core machine running journeys does not queue logins behind hashing.
    "TL_ARGON2_TIME_COST": "2",
    "TL_ARGON2_MEMORY_KIB": "19456",
    "TL_ARGON2_PARALLELISM": "1",
}


class ServiceNotControllable(LookupError):
    """A journey asked to kill/restart a service that Throughline does not run (external mode)."""


def state_file() -> Path:
    """Where a detached stack is remembered (`throughline stack status|down|env`)."""
    base = os.environ.get("THROUGHLINE_STATE_DIR") or os.path.join(os.getcwd(), ".throughline")
    return Path(base) / "stack.json"


@dataclass
class Service:
    """One running service of the stack."""

    name: str
    process: ManagedProcess
    url: str

    def kill(self) -> None:
        """SIGKILL, as a crash (the UI must notice)."""
        self.process.kill()

    def stop(self) -> None:
        self.process.stop()

    def start(self) -> float:
        self.process.start()
        return self.process.wait_ready()

    async def astart(self) -> float:
        """start() for async code: spawn on this thread (PDEATHSIG is tied to the spawning thread),
        wait for readiness in a worker so the event loop (browser, recorders) keeps running."""
        self.process.start()
        return await asyncio.to_thread(self.process.wait_ready)

    def restart(self) -> float:
        """Graceful stop, start on the same port, wait until ready; seconds to ready."""
        return self.process.restart()

    @property
    def is_running(self) -> bool:
        return self.process.is_running()


@dataclass
class Stack:
    """The whole platform; `with Stack() as s:` or `start()`/`stop()`."""

    only: tuple[str, ...] = ALL
    run_dir: Path | None = None
    keep_run_dir: bool = False
    redis_appendonly: bool = True
    die_with_parent: bool = True
    external: bool = False
    urls: dict[str, str] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    platform_env: dict[str, str] = field(default_factory=dict)
    _owns_run_dir: bool = False

    # -- construction --------------------------------------------------------
    @classmethod
    def from_environment(cls, **kwargs: object) -> Stack:
        """External mode when THROUGHLINE_TARGET=external, else a local stack."""
        if os.environ.get("THROUGHLINE_TARGET", "local") == "external":
            urls = {key: os.environ[name] for key, name in ENV_NAMES.items() if os.environ.get(name)}
            missing = [name for key, name in ENV_NAMES.items() if key not in urls]
            if missing:
                raise ServiceStartError(
                    "stack",
                    "THROUGHLINE_TARGET=external but these are not set: " + ", ".join(missing),
                    hint="export them (see `throughline stack env` of a running stack)",
                )
            return cls(external=True, urls=urls)
        return cls(**kwargs)  # type: ignore[arg-type]

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> Stack:
        if self.external:
            return self
        t0 = time.monotonic()
        if self.run_dir is None:
            self.run_dir = Path(tempfile.mkdtemp(prefix="throughline-"))
            self._owns_run_dir = True
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o755)  # the unprivileged postgres user must reach its data dir
        real_clickhouse = os.environ.get("THROUGHLINE_CLICKHOUSE_SERVER_URL")
        if real_clickhouse:  # a real ClickHouse server replaces the chdb one everywhere
            self.only = tuple(n for n in self.only if n != "clickhouse")
        ports = {name: free_port() for name in self.only}
        smtp_http = free_port() if "smtp" in self.only else 0
        self._compute_urls(ports, smtp_http)
        if real_clickhouse:
            self.urls["clickhouse_url"] = real_clickhouse.rstrip("/")
        self.platform_env = self._platform_env(ports)
        try:
            # Apps fetch from each other lazily (JWKS, OIDC discovery), so after the stores
            # everything else starts at once; ready means each one's /health answers.
            for group in (INFRA, EXTERNALS + APPS):
                specs = [self._spec(name, ports, smtp_http) for name in group if name in self.only]
                self._start_group(specs)
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def _start_group(self, specs: list[ProcessSpec]) -> None:
        # Spawn from this thread (PDEATHSIG is tied to the spawning thread), then wait in parallel.
        started: list[ManagedProcess] = []
        for spec in specs:
            proc = ManagedProcess(spec, self.log_dir, die_with_parent=self.die_with_parent)
            self.services[spec.name] = Service(spec.name, proc, self._service_url(spec.name))
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
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries -------------------------------------------------------------
    @property
    def log_dir(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "logs"

    def service(self, name: str) -> Service:
        if self.external:
            raise ServiceNotControllable(
                f"service '{name}' cannot be stopped or restarted: THROUGHLINE_TARGET=external, so Throughline "
                "does not run it (run against the local stack to exercise this fault)"
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
        return {ENV_NAMES[key]: value for key, value in self.urls.items() if key in ENV_NAMES}

    def component_kinds(self) -> dict[str, str]:
        """Each service: 'real' or 'stand-in: <what>' (for the report's real-vs-stand-in ratio)."""
        names = self.services.keys() if not self.external else ALL
        return {n: (f"stand-in: {STAND_INS[n]}" if n in STAND_INS else "real") for n in names}

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

    # -- wiring --------------------------------------------------------------
    def _compute_urls(self, ports: dict[str, int], smtp_http: int) -> None:
        def has(name: str) -> bool:
            return name in ports

        u: dict[str, str] = {}
        if has("postgres"):
            u["auth_dsn"] = pg_service.dsn(ports["postgres"], "auth")
            u["backend_dsn"] = pg_service.dsn(ports["postgres"], "backend")
        if has("redis"):
            u["redis_url"] = redis_service.url(ports["redis"])
        if has("clickhouse"):
            u["clickhouse_url"] = ch_service.url(ports["clickhouse"])
        for name, key in (
            ("frontend", "frontend_url"),
            ("auth", "auth_url"),
            ("backend", "backend_url"),
            ("oidc", "oidc_url"),
        ):
            if has(name):
                u[key] = f"http://127.0.0.1:{ports[name]}"
        if has("backend"):
            u["ws_url"] = f"ws://127.0.0.1:{ports['backend']}/ws"
        if has("llm"):
            u["llm_url"] = f"http://127.0.0.1:{ports['llm']}/v1"
        if has("smtp"):
            u["smtp_sink_url"] = f"http://127.0.0.1:{smtp_http}"
            u["smtp"] = f"127.0.0.1:{ports['smtp']}"
        self.urls = u

    def _service_url(self, name: str) -> str:
        key = {
            "postgres": "backend_dsn",
            "redis": "redis_url",
            "clickhouse": "clickhouse_url",
            "llm": "llm_url",
            "oidc": "oidc_url",
            "smtp": "smtp_sink_url",
            "auth": "auth_url",
            "backend": "backend_url",
            "frontend": "frontend_url",
        }[name]
        return self.urls.get(key, "")

    def _platform_env(self, ports: dict[str, int]) -> dict[str, str]:
        assert self.run_dir is not None
        u = self.urls
        env = {k: os.environ.get(f"THROUGHLINE_STACK_{k[3:]}", v) for k, v in PLATFORM_DEFAULTS.items()}
        env.update(
            {
                "TL_AUTH_DSN": u.get("auth_dsn", ""),
                "TL_BACKEND_DSN": u.get("backend_dsn", ""),
                "TL_REDIS_URL": u.get("redis_url", ""),
                "TL_CLICKHOUSE_URL": u.get("clickhouse_url", ""),
                "TL_AUTH_URL": u.get("auth_url", ""),
                "TL_BACKEND_URL": u.get("backend_url", ""),
                "TL_FRONTEND_URL": u.get("frontend_url", ""),
                "TL_LLM_BASE_URL": u.get("llm_url", ""),
                "TL_OIDC_ISSUER": u.get("oidc_url", ""),
                "TL_OIDC_CLIENT_SECRET": secrets.token_urlsafe(24),
                "TL_SMTP_HOST": "127.0.0.1",
                "TL_SMTP_PORT": str(ports.get("smtp", 0)),
                "TL_SMTP_SINK_URL": u.get("smtp_sink_url", ""),
                "TL_INTERNAL_SECRET": secrets.token_urlsafe(32),
                "TL_JWT_PRIVATE_KEY_FILE": str(self.run_dir / "jwt.pem"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if "auth" in ports:
            env["TL_OIDC_REDIRECT_URIS"] = f"{u['auth_url']}/auth/oauth/{env['TL_OIDC_PROVIDER']}/callback"
        return env

    def _spec(self, name: str, ports: dict[str, int], smtp_http: int) -> ProcessSpec:
        assert self.run_dir is not None
        port = ports[name]
        if name == "postgres":
            return pg_service.spec(self.run_dir, port)
        if name == "redis":
            return redis_service.spec(self.run_dir, port, appendonly=self.redis_appendonly)
        if name == "clickhouse":
            return ch_service.spec(self.run_dir, port)
        module = {
            "llm": "stack.externals.llm",
            "oidc": "stack.externals.oidc",
            "smtp": "stack.externals.smtp_sink",
            "auth": "stack.auth_service",
            "backend": "stack.backend",
            "frontend": "stack.frontend",
        }[name]
        argv = [sys.executable, "-m", module, "--port", str(port)]
        health = f"http://127.0.0.1:{port}/health"
        if name == "smtp":
            argv += ["--http-port", str(smtp_http)]
            health = f"http://127.0.0.1:{smtp_http}/health"
        return ProcessSpec(
            name=name,
            argv=argv,
            port=port,
            ready=http_ready(health),
            env=self.platform_env,
            cwd=Path(__file__).resolve().parent.parent,
            startup_timeout=20,
            hint=f"run `{' '.join(argv[1:])}` by hand with the TL_* variables of docs/wiring.md "
            "to see the error",
        )

    # -- detached stacks -----------------------------------------------------
    def save_state(self, path: Path | None = None) -> Path:
        path = path or state_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "run_dir": str(self.run_dir),
            "urls": self.urls,
            "owns_run_dir": self._owns_run_dir,
            "services": {
                n: {"pid": s.process.pid, "url": s.url, "log": str(s.process.log_file)}
                for n, s in self.services.items()
            },
        }
        path.write_text(json.dumps(data, indent=2))
        return path


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
    """Stop a detached stack from its state file: TERM each process group, KILL stragglers."""
    services: dict[str, dict[str, object]] = state["services"]  # type: ignore[assignment]
    pids = {name: int(info["pid"]) for name, info in services.items()}  # type: ignore[call-overload]
    for name in reversed(list(pids)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pids[name], signal.SIGINT if name == "postgres" else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)  # bounded wait for processes that are not our children
    killed = []
    for name, pid in pids.items():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
            killed.append(name)
    if state.get("owns_run_dir") and state.get("run_dir"):
        shutil.rmtree(str(state["run_dir"]), ignore_errors=True)
    return killed


def iter_env_lines(env: dict[str, str]) -> Iterator[str]:
    for name, value in env.items():
        yield f"export {name}={value}"


def parse_only(value: str | None) -> tuple[str, ...]:
    """'infra', 'all' or a comma list of service names -> names in start order."""
    if not value or value == "all":
        return ALL
    wanted: set[str] = set()
    for part in value.split(","):
        part = part.strip()
        if part == "infra":
            wanted.update(INFRA)
        elif part == "externals":
            wanted.update(EXTERNALS)
        elif part in ALL:
            wanted.add(part)
        else:
            raise ValueError(f"unknown service '{part}' (known: infra, externals, {', '.join(ALL)})")
    return tuple(n for n in ALL if n in wanted)
