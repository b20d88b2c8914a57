"""`throughline stack up --detach | status | env | down` and `doctor`, as a person runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from harness.stack import pid_alive

ROOT = Path(__file__).resolve().parent.parent


def throughline(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "THROUGHLINE_STATE_DIR": str(cwd / ".throughline"), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def test_should_bring_infra_up_detached_export_env_and_leave_nothing_after_down(tmp_path: Path) -> None:
    up = throughline("stack", "up", "--detach", "--only", "infra", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert "stack healthy in" in up.stdout
    state = json.loads((tmp_path / ".throughline" / "stack.json").read_text())
    pids = {name: info["pid"] for name, info in state["services"].items()}
    try:
        assert set(pids) == {"postgres", "redis", "clickhouse"}
        status = throughline("stack", "status", cwd=tmp_path)
        assert status.returncode == 0 and status.stdout.count(" up ") == 3, status.stdout
        env = throughline("stack", "env", cwd=tmp_path)
        exports = dict(line.removeprefix("export ").split("=", 1) for line in env.stdout.splitlines())
        assert set(exports) == {
            "THROUGHLINE_AUTH_DSN",
            "THROUGHLINE_BACKEND_DSN",
            "THROUGHLINE_REDIS_URL",
            "THROUGHLINE_CLICKHOUSE_URL",
        }
        conn = await asyncpg.connect(exports["THROUGHLINE_AUTH_DSN"])
        assert await conn.fetchval("SELECT current_database()") == "auth"
        await conn.close()
        again = throughline("stack", "up", "--detach", "--only", "infra", cwd=tmp_path)
        assert again.returncode == 1 and "already up" in again.stderr
    finally:
        down = throughline("stack", "down", cwd=tmp_path)
    assert down.returncode == 0 and "stack down" in down.stdout
    assert not any(pid_alive(pid) for pid in pids.values()), "a service outlived `throughline stack down`"
    assert not Path(state["run_dir"]).exists(), "down leaves the run directory behind"
    assert throughline("stack", "status", cwd=tmp_path).returncode == 1


def test_should_reject_an_unknown_service_name(tmp_path: Path) -> None:
    result = throughline("stack", "up", "--only", "postgres,mysql", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown service 'mysql'" in result.stderr


def test_doctor_should_list_what_is_installed(tmp_path: Path) -> None:
    result = throughline("doctor", cwd=tmp_path)
    assert "PostgreSQL server" in result.stdout and "redis-server" in result.stdout
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("value", ["infra", "postgres,redis", "all"])
def test_should_parse_service_selections(value: str) -> None:
    from harness.stack import ALL, INFRA, parse_only

    expected = {"infra": INFRA, "postgres,redis": ("postgres", "redis"), "all": ALL}[value]
    assert parse_only(value) == expected
