"""A target's services, declared in TOML (its services.toml): loaded and validated, nothing started.

    knob_prefix = "TL_"         # knob NAME reaches every command as TL_NAME
    [knobs]     NAME = "value"  # test-friendly defaults; target.toml [knobs], then THROUGHLINE_STACK_NAME override
    [secrets]   name = 24       # optional: bytes of randomness of {secret.name} (default 32)
    [env]       VAR = "..."     # for every command service and stand-in (the platform's environment)
    [exports]   key = "..."     # stack.urls[key]; THROUGHLINE_<KEY> in `throughline stack env`
    [services.<name>]           # use = "<block>" (harness/services) or command = [...]

Templates: {port} and {ports.<n>} (the service's own), {<svc>.port}, {<svc>.url}, {<svc>.ports.<n>},
{<svc>.db.<name>} (a postgres block's DSN), {run_dir}, {python}, {project}, {target_dir},
{source_root}, {secret.<name>}, {knob.<NAME>}; `{{` and `}}` are literal braces. {source_root} is
the folder the platform's own code is imported from: {project}, except under `throughline prove`,
which points it (THROUGHLINE_SOURCE_ROOT) at a scratch copy with one defect drill applied. Every port is allocated before
anything starts, so a reference never implies an order: `depends_on` alone orders the start.

Every mistake is one DeclarationError line: "<file>: <field>: <problem>".
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.services import blocks as registered_blocks
from harness.services.blocks import Block, OptionError

KNOB_OVERRIDE_PREFIX = "THROUGHLINE_STACK_"
EXPORT_ENV_PREFIX = "THROUGHLINE_"
DEFAULT_TIMEOUT = 20.0
DEFAULT_SECRET_BYTES = 32
READY_KINDS = ("http", "tcp", "log", "query")
COMMAND_READY_KINDS = frozenset({"http", "tcp", "log"})
GLOBAL_NAMES = ("run_dir", "python", "project", "target_dir", "source_root")
_RESERVED = {"port", "ports", "secret", "knob", *GLOBAL_NAMES}
_TOP_FIELDS = ("knob_prefix", "knobs", "secrets", "env", "exports", "services")
_COMMON_FIELDS = ("ready", "timeout", "depends_on", "restartable", "env", "hint")
_COMMAND_FIELDS = ("command", "cwd", "url", "ports", "stand_in", "coverage", *_COMMON_FIELDS)
_PACKAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_KNOB_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LOWER_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


class DeclarationError(ValueError):
    """A services.toml that cannot be used; the message is one line naming the file and the field."""


def display_path(path: Path) -> str:
    """The path relative to the working directory when it is below it (shorter messages)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def template_refs(text: str) -> list[str]:
    """The references of a template, in order; ValueError on a stray brace."""
    refs: list[str] = []
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        if match.group(1) is None:
            raise ValueError(f"stray {token!r} in {text!r} (write {token * 2} for a literal brace)")
        refs.append(match.group(1).strip())
    return refs


def render(text: str, resolve: Callable[[str], str]) -> str:
    """The template with every {reference} replaced by resolve(reference)."""

    def one(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        return resolve(match.group(1).strip())

    return _TOKEN.sub(one, text)


@dataclass(frozen=True)
class ReadySpec:
    """How to know a service is ready: an HTTP 200, an open port, a log line or a query."""

    kind: Literal["http", "tcp", "log", "query"]
    value: str = ""  # http: URL template; log: regex; query: SQL; tcp: ""


@dataclass(frozen=True)
class ServiceDecl:
    """One declared service: a building block (`use`) or a command."""

    name: str
    block: Block | None = None
    command: tuple[str, ...] = ()
    cwd: str | None = None
    url: str | None = None
    ready: ReadySpec | None = None
    timeout: float | None = None
    depends_on: tuple[str, ...] = ()
    restartable: bool = True
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[str, ...] = ()
    stand_in: str = ""
    hint: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    # The packages `--platform-coverage` measures in this service (harness/platform_coverage.py);
    # empty: the module of `python -m <module>`, if the command is that.
    coverage: tuple[str, ...] = ()

    @property
    def kind(self) -> Literal["store", "stand-in", "app"]:
        """'store' and 'stand-in' come from the block; a command is the platform's own unless it says stand_in."""
        if self.block is not None:
            return self.block.kind
        return "stand-in" if self.stand_in else "app"

    @property
    def third_party(self) -> str:
        return self.block.third_party if self.block is not None else self.stand_in

    @property
    def extra_ports(self) -> tuple[str, ...]:
        return self.block.extra_ports if self.block is not None else self.ports

    @property
    def startup_timeout(self) -> float:
        if self.timeout is not None:
            return self.timeout
        return self.block.default_timeout if self.block is not None else DEFAULT_TIMEOUT

    @property
    def gets_platform_env(self) -> bool:
        return self.block is None or self.block.gets_platform_env


@dataclass(frozen=True)
class Declaration:
    """A validated services.toml."""

    path: Path
    knob_prefix: str
    knobs: Mapping[str, str]
    secrets: Mapping[str, int]
    env: Mapping[str, str]
    exports: Mapping[str, str]
    services: Mapping[str, ServiceDecl]

    @property
    def folder(self) -> Path:
        return self.path.parent

    def error(self, where: str, problem: str) -> DeclarationError:
        return DeclarationError(f"{display_path(self.path)}: {where}: {problem}")

    def names(self, kind: str | None = None) -> tuple[str, ...]:
        """Service names in declaration order, optionally only those of one kind (store, stand-in, app)."""
        return tuple(n for n, s in self.services.items() if kind is None or s.kind == kind)

    def closure(self, names: Iterable[str]) -> tuple[str, ...]:
        """`names` and everything they depend on, transitively, in declaration order."""
        wanted: set[str] = set()
        todo = list(names)
        while todo:
            name = todo.pop()
            if name not in self.services:
                raise ValueError(f"unknown service '{name}' (declared: {', '.join(sorted(self.services))})")
            if name not in wanted:
                wanted.add(name)
                todo.extend(self.services[name].depends_on)
        return tuple(n for n in self.services if n in wanted)

    def levels(self, names: Iterable[str]) -> list[tuple[str, ...]]:
        """Start levels of `names`: each after the ones it depends on; within a level, declaration order."""
        chosen = set(names)
        depth: dict[str, int] = {}

        def level(name: str) -> int:
            if name not in depth:
                deps = [d for d in self.services[name].depends_on if d in chosen]
                depth[name] = 1 + max((level(d) for d in deps), default=-1)
            return depth[name]

        ordered = [n for n in self.services if n in chosen]
        grouped: dict[int, list[str]] = {}
        for name in ordered:
            grouped.setdefault(level(name), []).append(name)
        return [tuple(grouped[i]) for i in sorted(grouped)]

    def component_kinds(self, names: Iterable[str] | None = None) -> dict[str, str]:
        """Each service: 'real' or 'stand-in: <third party>' (the report's real-vs-stand-in ratio)."""
        chosen = self.services if names is None else [n for n in self.services if n in set(names)]
        return {
            n: (
                f"stand-in: {self.services[n].third_party}" if self.services[n].kind == "stand-in" else "real"
            )
            for n in chosen
        }

    def knob_values(
        self, overrides: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """Each knob's value: THROUGHLINE_STACK_<NAME>, else the target's [knobs], else the declared default."""
        environ = os.environ if environ is None else environ
        overrides = overrides or {}
        return {
            name: environ.get(f"{KNOB_OVERRIDE_PREFIX}{name}", overrides.get(name, default))
            for name, default in self.knobs.items()
        }

    def knob_env(self, values: Mapping[str, str]) -> dict[str, str]:
        """The knobs as the environment variables the platform reads (knob_prefix + NAME)."""
        return {f"{self.knob_prefix}{name}": value for name, value in values.items()}

    def check_knob_overrides(self, overrides: Mapping[str, str], where: str) -> None:
        """A target's [knobs] may only set knobs this declaration has."""
        for name in overrides:
            if name not in self.knobs:
                raise DeclarationError(
                    f"{where}: knobs.{name}: unknown knob (declared in {display_path(self.path)}: "
                    f"{', '.join(self.knobs) or 'none'})"
                )


def export_env_name(key: str) -> str:
    """The variable `throughline stack env` prints for an export: auth_url -> THROUGHLINE_AUTH_URL."""
    return f"{EXPORT_ENV_PREFIX}{key.upper()}"


# -- loading ----------------------------------------------------------------------


def load_declaration(path: Path | str) -> Declaration:
    """Read and validate a services.toml; DeclarationError (one line, file and field) on any mistake."""
    path = Path(path)
    where = display_path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise DeclarationError(f"{where}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise DeclarationError(f"{where}: not valid TOML: {exc}") from None
    return _Loader(path, data).load()


class _Loader:
    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self.services: dict[str, ServiceDecl] = {}
        self.knobs: dict[str, str] = {}
        self.secrets: dict[str, int] = {}

    def fail(self, where: str, problem: str) -> DeclarationError:
        return DeclarationError(f"{display_path(self.path)}: {where}: {problem}")

    def table(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a table, got {type(value).__name__}")
        return value

    def string(self, value: Any, where: str, *, empty: bool = False) -> str:
        if not isinstance(value, str) or (not empty and not value.strip()):
            raise self.fail(where, f"must be a non-empty string, got {value!r}")
        return value

    def strings(self, value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(where, f"must be a list of strings, got {value!r}")
        return tuple(value)

    def load(self) -> Declaration:
        data = self.data
        for key in data:
            if key not in _TOP_FIELDS:
                raise self.fail(key, f"unknown field (expected one of: {', '.join(_TOP_FIELDS)})")
        prefix = data.get("knob_prefix", "")
        if not isinstance(prefix, str) or (prefix and not _ENV_NAME.match(prefix)):
            raise self.fail(
                "knob_prefix", f"must be the start of an environment variable name, got {prefix!r}"
            )
        self.load_knobs(self.table(data.get("knobs", {}), "knobs"))
        self.load_secrets(self.table(data.get("secrets", {}), "secrets"))
        raw_services = self.table(data.get("services", {}), "services")
        if not raw_services:
            raise self.fail("services", "declares no service")
        for name in raw_services:
            if not _SERVICE_NAME.match(name) or name in _RESERVED:
                raise self.fail(
                    f"services.{name}",
                    "a service name is lower-case letters, digits, '-' and '_' and not one of "
                    + ", ".join(sorted(_RESERVED)),
                )
        # Names first, so references and depends_on can be checked against every service.
        self.services = {name: ServiceDecl(name) for name in raw_services}
        for name, raw in raw_services.items():
            self.services[name] = self.load_service(name, self.table(raw, f"services.{name}"))
        for decl in self.services.values():
            self.check_service_refs(decl)
        self.check_cycles()
        knob_envs = {f"{prefix}{name}": name for name in self.knobs}
        env = self.load_env(self.table(data.get("env", {}), "env"), "env")
        for var, text in env.items():
            self.template(text, f"env.{var}", None)
            if var in knob_envs:
                raise self.fail(
                    f"env.{var}", f"is already the variable of knob {knob_envs[var]} (knob_prefix {prefix!r})"
                )
        exports: dict[str, str] = {}
        for key, value in self.table(data.get("exports", {}), "exports").items():
            if not _LOWER_NAME.match(key):
                raise self.fail(f"exports.{key}", "an export name is lower-case letters, digits and '_'")
            exports[key] = self.template(value, f"exports.{key}", None)
        return Declaration(self.path, prefix, self.knobs, self.secrets, env, exports, self.services)

    def load_knobs(self, raw: dict[str, Any]) -> None:
        for name, value in raw.items():
            if not _KNOB_NAME.match(name):
                raise self.fail(f"knobs.{name}", "a knob name is upper-case letters, digits and '_'")
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise self.fail(f"knobs.{name}", f"must be a string or a number, got {value!r}")
            self.knobs[name] = str(value)

    def load_secrets(self, raw: dict[str, Any]) -> None:
        for name, size in raw.items():
            if not _LOWER_NAME.match(name):
                raise self.fail(f"secrets.{name}", "a secret name is lower-case letters, digits and '_'")
            if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 256:
                raise self.fail(
                    f"secrets.{name}", f"must be the number of random bytes (8-256), got {size!r}"
                )
            self.secrets[name] = size

    def load_env(self, raw: dict[str, Any], where: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for var, value in raw.items():
            if not _ENV_NAME.match(var):
                raise self.fail(f"{where}.{var}", "is not an environment variable name")
            env[var] = self.string(value, f"{where}.{var}", empty=True)
        return env

    def load_service(self, name: str, raw: dict[str, Any]) -> ServiceDecl:
        where = f"services.{name}"
        if "use" in raw and "command" in raw:
            raise self.fail(where, "has both 'use' and 'command'; a service is a building block or a command")
        if "use" in raw:
            use = self.string(raw["use"], f"{where}.use")
            block = registered_blocks().get(use)
            if block is None:
                raise self.fail(
                    f"{where}.use",
                    f"unknown building block {use!r} (known: {', '.join(sorted(registered_blocks()))})",
                )
            allowed: tuple[str, ...] = ("use", *_COMMON_FIELDS, *block.options)
        elif "command" in raw:
            block = None
            allowed = _COMMAND_FIELDS
        else:
            raise self.fail(
                where,
                "needs 'use' (a building block: "
                + ", ".join(sorted(registered_blocks()))
                + ") or 'command' (the argv to run)",
            )
        for key in raw:
            if key not in allowed:
                raise self.fail(f"{where}.{key}", f"unknown field (expected one of: {', '.join(allowed)})")
        command: tuple[str, ...] = ()
        if block is None:
            command = self.strings(raw["command"], f"{where}.command")
            if not command or not command[0].strip():
                raise self.fail(f"{where}.command", "must name the program to run")
        depends_on = self.strings(raw.get("depends_on", []), f"{where}.depends_on")
        for dep in depends_on:
            if dep not in self.services:
                raise self.fail(
                    f"{where}.depends_on",
                    f"unknown service '{dep}' (declared: {', '.join(sorted(self.services))})",
                )
        if len(set(depends_on)) != len(depends_on):
            raise self.fail(f"{where}.depends_on", "names a service twice")
        restartable = raw.get("restartable", True)
        if not isinstance(restartable, bool):
            raise self.fail(f"{where}.restartable", f"must be true or false, got {restartable!r}")
        timeout = raw.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise self.fail(f"{where}.timeout", f"must be a positive number of seconds, got {timeout!r}")
        ports = self.strings(raw.get("ports", []), f"{where}.ports")
        for port in ports:
            if not _LOWER_NAME.match(port) or ports.count(port) > 1:
                raise self.fail(f"{where}.ports", f"{port!r}: port names are unique lower-case names")
        options: dict[str, Any] = {}
        if block is not None:
            try:
                options = block.check_options({k: raw[k] for k in block.options if k in raw})
            except OptionError as exc:
                raise self.fail(f"{where}.{exc.option}", exc.problem) from None
        coverage = self.strings(raw.get("coverage", []), f"{where}.coverage")
        for package in coverage:
            if not _PACKAGE_NAME.match(package):
                raise self.fail(
                    f"{where}.coverage",
                    f"{package!r}: expected importable package names, e.g. 'stack.backend'",
                )
        return ServiceDecl(
            name=name,
            block=block,
            command=command,
            cwd=self.string(raw["cwd"], f"{where}.cwd") if "cwd" in raw else None,
            url=self.string(raw["url"], f"{where}.url") if "url" in raw else None,
            ready=self.load_ready(raw["ready"], f"{where}.ready", block) if "ready" in raw else None,
            timeout=float(timeout) if timeout is not None else None,
            depends_on=depends_on,
            restartable=restartable,
            env=self.load_env(self.table(raw.get("env", {}), f"{where}.env"), f"{where}.env"),
            ports=ports,
            stand_in=self.string(raw["stand_in"], f"{where}.stand_in") if "stand_in" in raw else "",
            hint=self.string(raw["hint"], f"{where}.hint") if "hint" in raw else "",
            options=options,
            coverage=coverage,
        )

    def load_ready(self, raw: Any, where: str, block: Block | None) -> ReadySpec:
        shape = '{ http = "<url>" }, { tcp = true }, { log = "<regex>" } or { query = "<sql>" }'
        if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in READY_KINDS:
            raise self.fail(where, f"must be one of {shape}, got {raw!r}")
        kind, value = next(iter(raw.items()))
        allowed = block.ready_kinds if block is not None else COMMAND_READY_KINDS
        if kind not in allowed:
            what = f"a {block.name} block" if block is not None else "a command service"
            raise self.fail(
                where, f"'{kind}' is not a readiness check for {what} (use: {', '.join(sorted(allowed))})"
            )
        if kind == "tcp":
            if value is not True:
                raise self.fail(where, f"write {{ tcp = true }}, got {raw!r}")
            return ReadySpec("tcp")
        text = self.string(value, f"{where}.{kind}")
        if kind == "http" and not text.startswith(("http://", "https://")):
            raise self.fail(f"{where}.http", f"must be an http:// or https:// URL, got {text!r}")
        if kind == "log":
            try:
                re.compile(text)
            except re.error as exc:
                raise self.fail(f"{where}.log", f"not a regular expression: {exc}") from None
        return ReadySpec(kind, text)

    # -- references ---------------------------------------------------------
    def check_service_refs(self, decl: ServiceDecl) -> None:
        where = f"services.{decl.name}"
        for i, arg in enumerate(decl.command):
            self.template(arg, f"{where}.command[{i}]", decl.name)
        for key, text in (("cwd", decl.cwd), ("url", decl.url)):
            if text is not None:
                self.template(text, f"{where}.{key}", decl.name, no_urls=key == "url")
        if decl.ready is not None and decl.ready.kind == "http":
            self.template(decl.ready.value, f"{where}.ready.http", decl.name)
        for var, text in decl.env.items():
            self.template(text, f"{where}.env.{var}", decl.name)
        if decl.hint:
            self.template(decl.hint, f"{where}.hint", decl.name)

    def template(self, value: Any, where: str, own: str | None, *, no_urls: bool = False) -> str:
        text = self.string(value, where, empty=True)
        try:
            refs = template_refs(text)
        except ValueError as exc:
            raise self.fail(where, str(exc)) from None
        for ref in refs:
            problem = self.ref_problem(ref, own, no_urls)
            if problem:
                raise self.fail(where, f"{{{ref}}} refers to nothing: {problem}")
        return text

    def ref_problem(self, ref: str, own: str | None, no_urls: bool) -> str:
        parts = ref.split(".")
        head = parts[0]
        if head in GLOBAL_NAMES and len(parts) == 1:
            return ""
        if head in ("port", "ports"):
            if own is None:
                return f"{{{ref}}} is a service's own port; here name the service, e.g. {{<service>.{ref}}}"
            if head == "ports":
                return self.port_problem(own, parts[1:])
            return "" if len(parts) == 1 else "write {port}"
        if head == "secret":
            if len(parts) != 2 or not _LOWER_NAME.match(parts[1]):
                return "write {secret.<name>} with a lower-case name"
            # A secret is made on first mention; [secrets] only sets its size.
            self.secrets.setdefault(parts[1], DEFAULT_SECRET_BYTES)
            return ""
        if head == "knob":
            if len(parts) != 2:
                return "write {knob.<NAME>}"
            if parts[1] not in self.knobs:
                return (
                    f"no knob '{parts[1]}' in [knobs] (declared: {', '.join(sorted(self.knobs)) or 'none'})"
                )
            return ""
        if head not in self.services:
            return (
                f"no service '{head}' (declared: {', '.join(sorted(self.services))}; "
                f"also {', '.join(GLOBAL_NAMES)}, secret.<name>, knob.<NAME>)"
            )
        rest = parts[1:]
        if rest == ["port"]:
            return ""
        if rest == ["url"]:
            return "a service's url may not use another service's url (name its port)" if no_urls else ""
        if rest[:1] == ["ports"]:
            return self.port_problem(head, rest[1:])
        service = self.services[head]
        if len(rest) == 2 and service.block is not None:
            groups = service.block.names(service.options)
            if rest[0] in groups:
                if rest[1] in groups[rest[0]]:
                    return ""
                return f"service '{head}' has no {rest[0]} '{rest[1]}' (has: {', '.join(groups[rest[0]])})"
        offered = ["port", "url", *(f"ports.{p}" for p in service.extra_ports)]
        if service.block is not None:
            offered += [f"{g}.<name>" for g in service.block.names(service.options)]
        return f"service '{head}' offers {', '.join('{' + head + '.' + o + '}' for o in offered)}"

    def port_problem(self, service: str, rest: list[str]) -> str:
        ports = self.services[service].extra_ports
        if len(rest) == 1 and rest[0] in ports:
            return ""
        return f"service '{service}' has no such extra port (has: {', '.join(ports) or 'none'})"

    def check_cycles(self) -> None:
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        path: list[str] = []

        def visit(name: str) -> None:
            state[name] = 1
            path.append(name)
            for dep in self.services[name].depends_on:
                if state.get(dep) == 1:
                    cycle = [*path[path.index(dep) :], dep]
                    raise self.fail(f"services.{name}.depends_on", "dependency cycle " + " -> ".join(cycle))
                if dep not in state:
                    visit(dep)
            path.pop()
            state[name] = 2

        for name in self.services:
            if name not in state:
                visit(name)
