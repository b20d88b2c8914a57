"""The process supervisor against real processes: start failures, ports, kill/restart, no leftovers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.process import (
    ManagedProcess,
    ProcessSpec,
    ServiceStartError,
    free_port,
    http_ready,
    tcp_ready,
)
from harness.stack import pid_alive

PY = sys.executable


def http_server_spec(port: int, name: str = "web") -> ProcessSpec:
    return ProcessSpec(
        name=name,
        argv=[PY, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        port=port,
        ready=http_ready(f"http://127.0.0.1:{port}/"),
        startup_timeout=10,
    )


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)  # bounded poll of an OS condition
    return predicate()


def test_should_report_log_tail_when_service_dies_at_start(tmp_path: Path) -> None:
    port = free_port()
    spec = ProcessSpec(
        name="doomed",
        port=port,
        ready=tcp_ready(port),
        hint="fix the config",
        argv=[PY, "-c", "import sys; print('fatal: config key missing: db_url'); sys.exit(3)"],
    )
    proc = ManagedProcess(spec, tmp_path)
    proc.start()
    with pytest.raises(ServiceStartError) as info:
        proc.wait_ready()
    message = str(info.value)
    assert "service 'doomed' failed to start" in message
    assert "exited with code 3" in message
    assert "fatal: config key missing: db_url" in message, "the log tail is not in the error"
    assert str(tmp_path / "doomed.log") in message
    assert "hint: fix the config" in message


def test_should_refuse_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = ManagedProcess(http_server_spec(port), tmp_path)
        with pytest.raises(ServiceStartError, match=f"port {port} on 127.0.0.1 is already in use"):
            proc.start()
        assert proc.proc is None, "nothing may be spawned when the port is taken"


def test_should_name_a_missing_binary(tmp_path: Path) -> None:
    spec = ProcessSpec(name="ghost", argv=["/nonexistent/bin/ghostd"], hint="apt-get install ghost")
    with pytest.raises(ServiceStartError, match="executable not found: /nonexistent/bin/ghostd"):
        ManagedProcess(spec, tmp_path).start()


def test_should_stop_a_process_that_never_gets_ready(tmp_path: Path) -> None:
    port = free_port()
    spec = ProcessSpec(
        name="mute",
        port=port,
        ready=tcp_ready(port),
        startup_timeout=0.5,
        argv=[PY, "-c", "import time; print('booting', flush=True); time.sleep(60)"],
    )
    proc = ManagedProcess(spec, tmp_path)
    proc.start()
    with pytest.raises(ServiceStartError, match=r"not ready after 0 s|not ready after 1 s") as info:
        proc.wait_ready()
    assert "booting" in str(info.value)
    assert not proc.is_running(), "a half-started service must be cleaned up"


def test_should_kill_and_restart_on_the_same_port(tmp_path: Path) -> None:
    port = free_port()
    proc = ManagedProcess(http_server_spec(port), tmp_path)
    proc.start()
    proc.wait_ready()
    first_pid = proc.pid
    proc.kill()
    assert not proc.is_running()
    assert proc.returncode() == -signal.SIGKILL
    assert not http_ready(f"http://127.0.0.1:{port}/")(), "killed server still answers"
    seconds = proc.restart()
    try:
        assert proc.pid != first_pid
        assert http_ready(f"http://127.0.0.1:{port}/")(), "restarted server does not answer"
        assert seconds > 0
    finally:
        proc.stop()
    assert "starting" in proc.log_tail(), "restarts append to the same log file"


def test_should_stop_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = f"import subprocess, time; c = subprocess.Popen(['sleep', '300']); open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(300)"
    proc = ManagedProcess(
        ProcessSpec(
            name="parent",
            argv=[PY, "-c", script],
            ready=lambda: pid_file.exists() and pid_file.read_text() != "",
        ),
        tmp_path,
    )
    proc.start()
    proc.wait_ready()
    child = int(pid_file.read_text())
    assert pid_alive(child)
    proc.stop(timeout=2)
    assert wait_until(lambda: not pid_alive(child) or _is_zombie(child)), "grandchild outlived stop()"


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


INTERRUPTED_SUITE = textwrap.dedent(
    """
    import json, os, pathlib, time

    def test_hold_the_stack(stack):
        pids = {name: svc.process.pid for name, svc in stack.services.items()}
        pathlib.Path(os.environ["PIDS_FILE"]).write_text(json.dumps(pids))
        time.sleep(120)
    """
)


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_should_leave_no_process_behind_when_pytest_is_interrupted(tmp_path: Path, how: str) -> None:
    """Ctrl-C, a cancelled CI job (SIGTERM) and a crashed pytest (SIGKILL) all take the stack down."""
    import json

    (tmp_path / "test_hold.py").write_text(INTERRUPTED_SUITE)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["harness.plugin"]\n')
    pids_file = tmp_path / "pids.json"
    env = {
        **os.environ,
        "PIDS_FILE": str(pids_file),
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    runner = subprocess.Popen(
        [
            PY,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--stack-only",
            "postgres,redis",
            "-o",
            "asyncio_default_fixture_loop_scope=session",
            str(tmp_path / "test_hold.py"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # A shell without job control starts background jobs with SIGINT ignored, and Python keeps
        # an ignored SIGINT ignored: the child gets the default Ctrl-C, however this suite was started.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert wait_until(lambda: pids_file.exists() and pids_file.read_text() != "", timeout=60), (
            "the stack never came up in the child pytest"
        )
        pids = json.loads(pids_file.read_text())
        assert set(pids) == {"postgres", "redis"}
        assert all(pid_alive(p) for p in pids.values())
        runner.send_signal(getattr(signal, how))
        runner.wait(timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
    output = runner.stdout.read().decode() if runner.stdout else ""
    leftovers = [
        name for name, pid in pids.items() if not wait_until(lambda p=pid: not pid_alive(p), timeout=10)
    ]
    assert not leftovers, f"after {how} these services outlived pytest: {leftovers}\n{output[-2000:]}"
