"""ClickHouse: the real engine from the chdb wheel, served over the HTTP interface by our server."""

from __future__ import annotations

import sys
from pathlib import Path

from harness.process import ProcessSpec, http_ready


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def spec(run_dir: Path, port: int) -> ProcessSpec:
    data_dir = run_dir / "clickhouse"
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
        name="clickhouse",
        argv=argv,
        port=port,
        ready=http_ready(url(port) + "/ping"),
        startup_timeout=30,
        hint="pip install chdb (the engine); the log above has the engine's error",
    )
