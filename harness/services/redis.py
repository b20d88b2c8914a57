"""Redis from Debian's redis-server on a free port; persistence off unless asked for (AOF)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any

from harness.process import ProcessSpec, ReadyCheck, ServiceStartError
from harness.services.blocks import Block, BlockRun, Check, OptionError


def find_binary() -> str:
    found = os.environ.get("THROUGHLINE_REDIS_SERVER") or shutil.which("redis-server")
    if not found:
        raise ServiceStartError(
            "redis",
            "redis-server not found on PATH",
            hint="apt-get install redis-server (or set THROUGHLINE_REDIS_SERVER)",
        )
    return found


def url(port: int, db: int = 0) -> str:
    return f"redis://127.0.0.1:{port}/{db}"


def spec(
    run_dir: Path,
    port: int,
    *,
    appendonly: bool = False,
    name: str = "redis",
    data_dir: Path | None = None,
) -> ProcessSpec:
    """redis-server on `port`, data in run_dir/redis (or data_dir); AOF when `appendonly` (restart journeys)."""
    data_dir = data_dir or run_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        find_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
        "--loglevel",
        "notice",
        "--databases",
        "16",
    ]
    return ProcessSpec(
        name=name,
        argv=argv,
        port=port,
        ready=ping_ready(port),
        startup_timeout=10,
        hint="check the log above for 'Address already in use' or a bad config option",
    )


def ping_ready(port: int) -> ReadyCheck:
    def check() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    return check


class RedisBlock(Block):
    """redis-server; `appendonly = true` keeps its data across a restart (AOF, fsync every second)."""

    name = "redis"
    kind = "store"
    options = ("appendonly",)
    default_timeout = 10.0

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        appendonly = options.get("appendonly", False)
        if not isinstance(appendonly, bool):
            raise OptionError("appendonly", f"must be true or false, got {appendonly!r}")
        return {"appendonly": appendonly}

    def url(self, run: BlockRun) -> str:
        return url(run.port)

    def spec(self, run: BlockRun) -> ProcessSpec:
        return spec(
            run.run_dir,
            run.port,
            appendonly=run.options["appendonly"],
            name=run.service,
            data_dir=run.data_dir("redis", self.name),
        )

    def doctor(self) -> list[Check]:
        found = os.environ.get("THROUGHLINE_REDIS_SERVER") or shutil.which("redis-server")
        return [("redis-server", bool(found), found or "apt-get install redis-server")]
