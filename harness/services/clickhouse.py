"""ClickHouse: the real engine from the chdb wheel, served over the HTTP interface by our server."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from harness.process import ProcessSpec, http_ready
from harness.services.blocks import Block, BlockRun, Check, python_module_checks

# A real ClickHouse server by URL replaces the chdb one everywhere (nothing is started).
SERVER_URL_VARIABLE = "THROUGHLINE_CLICKHOUSE_SERVER_URL"


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def spec(run_dir: Path, port: int, *, name: str = "clickhouse", data_dir: Path | None = None) -> ProcessSpec:
    data_dir = data_dir or run_dir / "clickhouse"
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "harness.services.clickhouse_server",
        "--path",
        str(data_dir),
        "--port",
        str(port),
    ]
    return ProcessSpec(
        name=name,
        argv=argv,
        port=port,
        ready=http_ready(url(port) + "/ping"),
        startup_timeout=30,
        hint="pip install chdb (the engine); the log above has the engine's error",
    )


class ClickHouseBlock(Block):
    """The real ClickHouse engine (chdb) over the HTTP interface; THROUGHLINE_CLICKHOUSE_SERVER_URL replaces it."""

    name = "clickhouse"
    kind = "store"
    default_timeout = 30.0

    def url(self, run: BlockRun) -> str:
        return url(run.port)

    def replaced_by(self) -> str | None:
        server = os.environ.get(SERVER_URL_VARIABLE)
        return server.rstrip("/") if server else None

    def spec(self, run: BlockRun) -> ProcessSpec:
        return spec(run.run_dir, run.port, name=run.service, data_dir=run.data_dir("clickhouse", self.name))

    def doctor(self) -> list[Check]:
        server = self.replaced_by()
        if server:
            return [("ClickHouse server", True, f"{server} ({SERVER_URL_VARIABLE})")]
        return python_module_checks({"chdb": "chdb"})
