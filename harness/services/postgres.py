"""PostgreSQL from Debian's server binaries, in the run directory, on a free port."""

from __future__ import annotations

import asyncio
import glob
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness.process import ProcessSpec, ReadyCheck, ServiceStartError, unprivileged_user
from harness.services.blocks import Block, BlockRun, Check, OptionError, python_module_checks

DATABASES = ("auth", "backend")
SUPERUSER = "tl"
# The reference platform's databases, owned by the superuser: what callers without a declaration get.
_DEFAULT_DATABASES: tuple[tuple[str, str | None], ...] = (("auth", None), ("backend", None))
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


def find_bin_dir() -> Path:
    """The newest PostgreSQL server bin dir (THROUGHLINE_PG_BIN overrides)."""
    override = os.environ.get("THROUGHLINE_PG_BIN")
    candidates = (
        [override]
        if override
        else sorted(
            glob.glob("/usr/lib/postgresql/*/bin"),
            key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
            reverse=True,
        )
    )
    for cand in candidates:
        if cand and (Path(cand) / "postgres").exists() and (Path(cand) / "initdb").exists():
            return Path(cand)
    raise ServiceStartError(
        "postgres",
        "no PostgreSQL server binaries found"
        + (f" in {override}" if override else " under /usr/lib/postgresql/*/bin"),
        hint="apt-get install postgresql (or set THROUGHLINE_PG_BIN to the directory holding initdb and postgres)",
    )


def dsn(port: int, database: str, user: str = SUPERUSER, password: str = "") -> str:
    """A DSN for `database`, as the superuser (trust auth) unless a user and its password are given."""
    auth = f"{user}:{quote(password, safe='')}" if password else user
    return f"postgresql://{auth}@127.0.0.1:{port}/{database}"


def _template_dir(bin_dir: Path) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "throughline"
    return cache / f"pg-template-{bin_dir.parent.name}"


def init_cluster(data_dir: Path) -> None:
    """initdb into data_dir as an unprivileged user, copying a cached template cluster when one exists.

    initdb costs about a second; a copy of an initialised, never-started cluster is equivalent
    and ten times faster. The template lives under ~/.cache/throughline and is rebuilt if absent.
    """
    bin_dir = find_bin_dir()
    user = unprivileged_user()
    template = _template_dir(bin_dir)
    if not (template / "PG_VERSION").exists():
        staging = template.with_name(template.name + f".tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        _initdb(bin_dir, staging, user)
        try:
            staging.rename(template)
        except OSError:  # another run built it first
            shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(template, data_dir, symlinks=True)
    if user is not None:
        for root, dirs, files in os.walk(data_dir):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), user.pw_uid, user.pw_gid)
        os.chown(data_dir, user.pw_uid, user.pw_gid)
    os.chmod(data_dir, 0o700)


def _initdb(bin_dir: Path, target: Path, user) -> None:  # type: ignore[no-untyped-def]
    target.mkdir(parents=True)
    if user is not None:
        os.chown(target, user.pw_uid, user.pw_gid)
        # The unprivileged user must be able to reach the directory.
        for parent in target.parents:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o011)
    argv = [
        str(bin_dir / "initdb"),
        "-D",
        str(target),
        "-U",
        SUPERUSER,
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-sync",
        "--locale=C",
    ]

    def demote() -> None:
        if user is not None:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

    result = subprocess.run(argv, capture_output=True, text=True, preexec_fn=demote, cwd="/")
    if result.returncode != 0:
        raise ServiceStartError(
            "postgres",
            f"initdb failed with code {result.returncode}: {(result.stderr or result.stdout).strip()[-800:]}",
            command=argv,
            hint="initdb refuses root: Throughline runs it as 'postgres' or 'nobody' "
            "(THROUGHLINE_SERVICE_USER); the run directory must be reachable by that user",
        )


def spec(
    run_dir: Path,
    port: int,
    *,
    name: str = "postgres",
    data_dir: Path | None = None,
    databases: Sequence[tuple[str, str | None]] = _DEFAULT_DATABASES,
    users: Mapping[str, str] | None = None,
    query: str = "SELECT 1",
) -> ProcessSpec:
    """A ProcessSpec for a postgres server on `port` with its data under run_dir/pg (or data_dir)."""
    bin_dir = find_bin_dir()
    data_dir = data_dir or run_dir / "pg"
    if not (data_dir / "PG_VERSION").exists():
        init_cluster(data_dir)
    argv = [
        str(bin_dir / "postgres"),
        "-D",
        str(data_dir),
        "-p",
        str(port),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "unix_socket_directories=",
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
        "-c",
        "full_page_writes=off",
        "-c",
        "max_connections=200",
        "-c",
        "shared_buffers=64MB",
        "-c",
        "log_min_messages=warning",
        "-c",
        "log_line_prefix=%m [%p] %d ",
    ]
    return ProcessSpec(
        name=name,
        argv=argv,
        port=port,
        ready=query_ready(port, databases, users, query),
        user=unprivileged_user(),
        cwd=Path("/"),
        startup_timeout=20,
        stop_signal=2,  # SIGINT = fast shutdown
        hint="check the log above; a stale postmaster.pid or a full disk are the usual causes",
    )


def query_ready(
    port: int,
    databases: Sequence[tuple[str, str | None]] = _DEFAULT_DATABASES,
    users: Mapping[str, str] | None = None,
    query: str = "SELECT 1",
) -> ReadyCheck:
    """Ready when `query` answers; creates the users and (database, owner) pairs on first success."""

    async def probe() -> bool:
        import asyncpg

        try:
            conn = await asyncpg.connect(dsn(port, "postgres"), timeout=1)
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresError):
            return False
        try:
            roles = {r["rolname"] for r in await conn.fetch("SELECT rolname FROM pg_roles")}
            for user, password in (users or {}).items():
                if user not in roles:
                    literal = password.replace("'", "''")
                    await conn.execute(f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{literal}'")
            existing = {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
            for name, owner in databases:
                if name not in existing:
                    await conn.execute(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else ""))
            await conn.execute(query)
            return True
        finally:
            await conn.close()

    def check() -> bool:
        return asyncio.run(probe())

    return check


class PostgresBlock(Block):
    """PostgreSQL with the databases and users the target declares; {<service>.db.<name>} is a DSN."""

    # databases = ["auth", {name = "billing", owner = "billing_app"}]
    # users = [{name = "billing_app", password = "..."}]
    # A database's DSN signs in as its owner when it has one, else as the superuser (trust auth).

    name = "postgres"
    kind = "store"
    options = ("databases", "users")
    ready_kinds = frozenset({"query"})

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        users: dict[str, str] = {}
        raw_users = options.get("users", [])
        if not isinstance(raw_users, list):
            raise OptionError("users", "must be a list of {name = ..., password = ...} tables")
        for i, entry in enumerate(raw_users):
            if not isinstance(entry, dict) or set(entry) != {"name", "password"}:
                raise OptionError(f"users[{i}]", "must be a table with exactly 'name' and 'password'")
            name, password = entry["name"], entry["password"]
            if not isinstance(name, str) or not _IDENTIFIER.match(name):
                raise OptionError(f"users[{i}].name", f"{name!r} is not a lower-case SQL identifier")
            if not isinstance(password, str):
                raise OptionError(f"users[{i}].password", "must be a string")
            if name in users or name == SUPERUSER:
                raise OptionError(
                    f"users[{i}].name", f"user {name!r} is declared twice (or is the superuser)"
                )
            users[name] = password
        raw_dbs = options.get("databases")
        if not isinstance(raw_dbs, list) or not raw_dbs:
            raise OptionError("databases", "a postgres block needs a non-empty list of databases")
        databases: list[tuple[str, str | None]] = []
        for i, entry in enumerate(raw_dbs):
            name, owner = (entry, None) if isinstance(entry, str) else (None, None)
            if isinstance(entry, dict):
                unknown = set(entry) - {"name", "owner"}
                if unknown or "name" not in entry:
                    raise OptionError(
                        f"databases[{i}]", "must be a name or a table {name = ..., owner = ...}"
                    )
                name, owner = entry["name"], entry.get("owner")
            if not isinstance(name, str) or not _IDENTIFIER.match(name):
                raise OptionError(f"databases[{i}]", f"{name!r} is not a lower-case SQL identifier")
            if name in {n for n, _ in databases} or name == "postgres":
                raise OptionError(
                    f"databases[{i}]", f"database {name!r} is declared twice (or is 'postgres')"
                )
            if owner is not None and owner not in users:
                raise OptionError(
                    f"databases[{i}].owner",
                    f"unknown user {owner!r} (declared users: {', '.join(users) or 'none'})",
                )
            databases.append((name, owner))
        return {"databases": tuple(databases), "users": users}

    def names(self, options: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
        return {"db": tuple(name for name, _ in options["databases"])}

    def name_value(self, run: BlockRun, group: str, name: str) -> str:
        owner = dict(run.options["databases"])[name]
        if owner is None:
            return dsn(run.port, name)
        return dsn(run.port, name, owner, run.options["users"][owner])

    def url(self, run: BlockRun) -> str:
        return dsn(run.port, "postgres")

    def spec(self, run: BlockRun) -> ProcessSpec:
        return spec(
            run.run_dir,
            run.port,
            name=run.service,
            data_dir=run.data_dir("pg", self.name),
            databases=run.options["databases"],
            users=run.options["users"],
        )

    def query_ready(self, run: BlockRun, sql: str) -> ReadyCheck:
        return query_ready(run.port, run.options["databases"], run.options["users"], sql)

    def doctor(self) -> list[Check]:
        checks: list[Check] = []
        try:
            checks.append(("PostgreSQL server", True, str(find_bin_dir())))
        except ServiceStartError as exc:
            checks.append(("PostgreSQL server", False, exc.hint))
        if os.geteuid() == 0:
            try:
                user = unprivileged_user()
                checks.append(("unprivileged user for PostgreSQL", True, user.pw_name if user else "-"))
            except RuntimeError as exc:
                checks.append(("unprivileged user for PostgreSQL", False, str(exc)))
        return checks + python_module_checks({"asyncpg": "asyncpg"})
