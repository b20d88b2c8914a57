"""Run directories: who owns one, removing it for good, and sweeping the ones whose owner died.

Every run directory the harness makes (`throughline-*` in the system temp dir) carries an
owner marker: the pid of the process that made it and that process's start time from
/proc/<pid>/stat, so a reused pid is not mistaken for the owner. A run killed with SIGKILL
cannot clean up after itself; the next start (`sweep_stale`) removes its directory, and
never the directory of a run still alive (parallel runs and xdist workers run at once).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PREFIX = "throughline-"
MARKER = ".throughline-owner"


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot), None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after its last ")".
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def make_run_dir(prefix: str = PREFIX, parent: Path | None = None) -> Path:
    """A fresh run directory, marked as owned by this process."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    mark_owner(path)
    return path


def mark_owner(path: Path, pid: int | None = None) -> None:
    """Write the owner marker of `path`: this process (or `pid`) and its start time."""
    pid = os.getpid() if pid is None else pid
    (path / MARKER).write_text(json.dumps({"pid": pid, "start": process_start_time(pid)}))


def owner_of(path: Path) -> tuple[int, int | None] | None:
    """(pid, start time) from the marker, None when `path` has no readable marker."""
    try:
        data = json.loads((path / MARKER).read_text())
        return int(data["pid"]), (None if data.get("start") is None else int(data["start"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_owner_alive(pid: int, start: int | None) -> bool:
    """True while the marker's process runs (the same one: same start time, not a reused pid)."""
    now = process_start_time(pid)
    if now is None:
        return False
    return start is None or now == start


def remove_run_dir(path: Path, timeout: float = 10.0) -> None:
    """Remove `path` for good; retried while a just-killed store may still be writing into it."""
    deadline = time.monotonic() + timeout
    while True:
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists() or time.monotonic() > deadline:
            return
        time.sleep(0.05)  # a dying process group still flushing files, bounded by the deadline


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


@dataclass(frozen=True)
class Swept:
    """One stale run directory removed by the sweep."""

    path: Path
    pid: int
    size: int

    def line(self) -> str:
        return f"throughline: swept stale run dir {self.path} (owner pid {self.pid} gone, {self.size / 1e6:.0f} MB)"


def sweep_stale(
    parent: Path | None = None, *, say: Callable[[str], None] | None = None, prefix: str = PREFIX
) -> list[Swept]:
    """Remove the marked run directories under `parent` (the temp dir) whose owner is gone.

    A directory without a marker is left alone: it may belong to a run of another version.
    """
    parent = Path(tempfile.gettempdir()) if parent is None else parent
    swept: list[Swept] = []
    for path in sorted(parent.glob(prefix + "*")):
        owner = owner_of(path) if path.is_dir() and not path.is_symlink() else None
        if owner is None or is_owner_alive(*owner):
            continue
        size = _size(path)
        remove_run_dir(path)
        if path.exists():
            continue
        item = Swept(path, owner[0], size)
        swept.append(item)
        if say is not None:
            say(item.line())
    return swept
