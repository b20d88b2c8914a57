"""PostgreSQL from Debian's server binaries, in the run directory, on a free port."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
from pathlib import Path

from harness.process import ProcessSpec, ServiceStartError, unprivileged_user

DATABASES = ("auth", "backend")
SUPERUSER = "tl"


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


def dsn(port: int, database: str) -> str:
    return f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{database}"


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


def spec(run_dir: Path, port: int) -> ProcessSpec:
    """A ProcessSpec for a postgres server on `port` with its data under run_dir/pg."""
    bin_dir = find_bin_dir()
    data_dir = run_dir / "pg"
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
        name="postgres",
        argv=argv,
        port=port,
        ready=query_ready(port),
        user=unprivileged_user(),
        cwd=Path("/"),
        startup_timeout=20,
        stop_signal=2,  # SIGINT = fast shutdown
        hint="check the log above; a stale postmaster.pid or a full disk are the usual causes",
    )


def query_ready(port: int):  # type: ignore[no-untyped-def]
    """Ready when a real query answers; creates the application databases on first success."""

    async def probe() -> bool:
        import asyncpg

        try:
            conn = await asyncpg.connect(dsn(port, "postgres"), timeout=1)
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresError):
            return False
        try:
            existing = {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
            for name in DATABASES:
                if name not in existing:
                    await conn.execute(f'CREATE DATABASE "{name}"')
            return await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()

    def check() -> bool:
        return asyncio.run(probe())

    return check
