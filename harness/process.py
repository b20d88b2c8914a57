"""Process supervisor: every service of the world runs under a `ManagedProcess`.

Habits borrowed from mirakuru and pytest-postgresql: the port is checked before
start, the process lives in its own process group, readiness is a real probe with
a deadline that also checks the process is still alive on every poll, stop takes
the whole group down, and a start failure names the service, the command, the log
file, its last lines and a hint.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import pwd
import random
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ManagedProcess",
    "ProcessSpec",
    "ServiceStartError",
    "ReadyCheck",
    "free_port",
    "http_ready",
    "is_port_free",
    "log_ready",
    "tail",
    "tcp_ready",
    "unprivileged_user",
]

_PR_SET_PDEATHSIG = 1
_allocated_ports: dict[int, int] = {}  # port -> the fd of its machine-wide reservation (free_port)
PORT_RANGE_START = 20000
PORT_LOCK_DIR = Path(tempfile.gettempdir()) / ".throughline-ports"
_port_lock = threading.Lock()


class ServiceStartError(RuntimeError):
    """A service did not become ready; the message says which, why, where its log is and what to do."""

    def __init__(
        self,
        service: str,
        reason: str,
        *,
        command: Sequence[str] = (),
        log_file: Path | None = None,
        hint: str = "",
    ) -> None:
        self.service = service
        self.reason = reason
        self.log_file = log_file
        self.hint = hint
        lines = [f"service '{service}' failed to start: {reason}"]
        if command:
            lines.append(f"  command: {shlex.join(command)}")
        if log_file is not None:
            lines.append(f"  log file: {log_file}")
            last = tail(log_file, 15)
            if last.strip():
                lines.append("  last log lines:")
                lines.extend("    | " + line for line in last.splitlines())
            else:
                lines.append("  (the log is empty)")
        if hint:
            lines.append(f"  hint: {hint}")
        super().__init__("\n".join(lines))


def tail(path: Path, lines: int = 40) -> str:
    """Last `lines` lines of a text file ('' when it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def is_port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port and we may bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as servers set it: TIME_WAIT leftovers of closed connections do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _port_range() -> range:
    """Where the harness picks service ports: below the kernel's ephemeral range (from which every
    outgoing connection takes its local port), so no client socket of any process can take a port
    between our pick and the service's bind."""
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    if low - 1 - PORT_RANGE_START >= 2000:
        return range(PORT_RANGE_START, low)
    return range(high + 1, 65536) if 65535 - high >= 2000 else range(PORT_RANGE_START, 65536)


def _reserve(port: int) -> bool:
    """Take the machine-wide reservation of `port` (an flock held until this process ends, even by
    SIGKILL): parallel workers and concurrent runs never pick the same port."""
    try:
        PORT_LOCK_DIR.mkdir(mode=0o1777, parents=True, exist_ok=True)
        fd = os.open(PORT_LOCK_DIR / f"{port}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # another user's lock file: that user's reservation, not ours to take
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _allocated_ports[port] = fd
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port on loopback, reserved for this process: never handed out twice on this
    machine while this process lives, whichever Throughline process asks (pytest-xdist workers,
    two runs at once)."""
    ports = _port_range()
    with _port_lock:
        start = random.randrange(len(ports))
        for i in range(len(ports)):
            port = ports[(start + i) % len(ports)]
            if port in _allocated_ports or not _reserve(port):
                continue
            if is_port_free(port, host):
                return port
            os.close(_allocated_ports.pop(port))  # something else listens there
    raise RuntimeError(f"could not find a free TCP port on loopback in {ports.start}-{ports.stop - 1}")


def unprivileged_user() -> pwd.struct_passwd | None:
    """The user to run servers as when we are root (PostgreSQL refuses root); None when not root."""
    if os.geteuid() != 0:
        return None
    wanted = os.environ.get("THROUGHLINE_SERVICE_USER")
    for name in ([wanted] if wanted else []) + ["postgres", "nobody"]:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError(
        "running as root but no unprivileged user (postgres, nobody) exists; "
        "set THROUGHLINE_SERVICE_USER to one"
    )


ReadyCheck = Callable[[], bool]


@dataclass
class ProcessSpec:
    """What to run and how to know it is ready."""

    name: str
    argv: list[str]
    port: int | None = None
    ready: ReadyCheck | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    user: pwd.struct_passwd | None = None
    startup_timeout: float = 20.0
    hint: str = ""
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 8.0


def _preexec(user: pwd.struct_passwd | None, die_with_parent: bool) -> Callable[[], None]:
    def run() -> None:
        if user is not None:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        if die_with_parent:
            # After setuid: a credential change clears PDEATHSIG. If the harness dies
            # (even SIGKILL), the kernel takes the service down with it.
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return run


class ManagedProcess:
    """One supervised service process: start, wait ready, stop, kill, restart."""

    def __init__(self, spec: ProcessSpec, log_dir: Path, *, die_with_parent: bool = True) -> None:
        self.spec = spec
        self.log_file = log_dir / f"{spec.name}.log"
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.started_at: float | None = None
        self.ready_seconds: float | None = None
        self.log_offset = 0  # where the current start's output begins in log_file (log readiness)

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        """Spawn the process (does not wait for readiness; call `wait_ready`)."""
        spec = self.spec
        if self.is_running():
            return
        if spec.port is not None and not is_port_free(spec.port):
            raise ServiceStartError(
                spec.name,
                f"port {spec.port} on 127.0.0.1 is already in use",
                command=spec.argv,
                hint="another process listens there; stop it, or let Throughline pick free ports "
                "(do not pin THROUGHLINE_*_PORT)",
            )
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **spec.env}
        with open(self.log_file, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting {shlex.join(spec.argv)}\n".encode())
            log.flush()
            self.log_offset = log.tell()
            try:
                self.proc = subprocess.Popen(
                    spec.argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=spec.cwd,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_preexec(spec.user, self.die_with_parent),
                )
            except FileNotFoundError as exc:
                raise ServiceStartError(
                    spec.name,
                    f"executable not found: {spec.argv[0]}",
                    command=spec.argv,
                    hint=spec.hint or "install it (run `throughline doctor`)",
                ) from exc
            except PermissionError as exc:
                raise ServiceStartError(
                    spec.name,
                    f"permission denied: {exc}",
                    command=spec.argv,
                    hint="check the file modes of the binary and the run directory",
                ) from exc
        self.pid = self.proc.pid
        self.started_at = time.monotonic()

    def wait_ready(self, timeout: float | None = None) -> float:
        """Poll the readiness probe until it passes; fail loudly if the process dies or the deadline passes."""
        spec = self.spec
        deadline = time.monotonic() + (timeout if timeout is not None else spec.startup_timeout)
        assert self.started_at is not None, "start() first"
        interval = 0.02
        last_error = "no readiness probe answered yet"
        while True:
            code = self.returncode()
            if code is not None:
                self._reap()
                raise ServiceStartError(
                    spec.name,
                    f"process exited with code {code} before it was ready",
                    command=spec.argv,
                    log_file=self.log_file,
                    hint=spec.hint,
                )
            try:
                if spec.ready is None or spec.ready():
                    self.ready_seconds = time.monotonic() - self.started_at
                    return self.ready_seconds
            except Exception as exc:  # the probe's error is the last thing seen
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceStartError(
                    spec.name,
                    f"not ready after {timeout or spec.startup_timeout:.0f} s (last probe: {last_error})",
                    command=spec.argv,
                    log_file=self.log_file,
                    hint=spec.hint,
                )
            # Back-off between readiness probes of a starting process (documented poll, not a test sleep).
            time.sleep(interval)
            interval = min(interval * 1.5, 0.2)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def _signal_group(self, sig: int) -> None:
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def _reap(self) -> None:
        # The leader may be gone while children of its group linger: take them too.
        self._signal_group(signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)

    def stop(self, timeout: float | None = None) -> None:
        """Graceful stop of the whole process group, SIGKILL after the timeout."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(self.spec.stop_signal)
            try:
                self.proc.wait(timeout=timeout if timeout is not None else self.spec.stop_timeout)
            except subprocess.TimeoutExpired:
                pass
        self._reap()

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a crash would (for fault journeys)."""
        self._signal_group(signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)

    def restart(self, timeout: float | None = None) -> float:
        """Stop (gracefully) then start again on the same port; returns seconds until ready."""
        self.stop()
        self.wait_port_released()
        self.start()
        return self.wait_ready(timeout)

    def wait_port_released(self, timeout: float = 10.0) -> None:
        """Block until the service's port can be bound again (after a stop or a kill)."""
        port = self.spec.port
        if port is None:
            return
        deadline = time.monotonic() + timeout
        while not is_port_free(port):
            if time.monotonic() > deadline:
                raise ServiceStartError(
                    self.spec.name,
                    f"port {port} still busy {timeout:.0f} s after stop",
                    log_file=self.log_file,
                )
            time.sleep(0.05)  # poll of a releasing socket, bounded by the deadline above

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_file, lines)

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited({self.returncode()})" if self.proc else "new"
        return f"<ManagedProcess {self.spec.name} pid={self.pid} port={self.spec.port} {state}>"


def tcp_ready(port: int, host: str = "127.0.0.1") -> ReadyCheck:
    """A probe that passes when host:port accepts a TCP connection."""

    def check() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            try:
                sock.connect((host, port))
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ETIMEDOUT, None):
                    return False
                raise
        return True

    return check


def http_ready(url: str, expect_status: int = 200) -> ReadyCheck:
    """A probe that passes when GET url answers expect_status."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)

    def check() -> bool:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=1.0)
        try:
            conn.request("GET", parts.path or "/")
            return conn.getresponse().status == expect_status
        except (ConnectionError, OSError):
            return False
        finally:
            conn.close()

    return check


def log_ready(process: ManagedProcess, pattern: str) -> ReadyCheck:
    """A probe that passes when the output of the process's current start matches `pattern`."""
    regex = re.compile(pattern)

    def check() -> bool:
        try:
            with open(process.log_file, "rb") as fh:
                fh.seek(process.log_offset)
                return regex.search(fh.read().decode("utf-8", "replace")) is not None
        except OSError:
            return False

    return check
