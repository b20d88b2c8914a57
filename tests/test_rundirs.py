"""Run directories (harness/rundirs.py): removed at the end of every run, swept after a SIGKILL.

- A normal run removes its run directory; --keep-run-dir keeps it (and no sweep takes it).
- A SIGKILLed run leaves its directory and no process; the next start sweeps it and says so.
- The sweep never takes the directory of a live owner, and a reused pid is not the owner.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.process import is_port_free
from harness.rundirs import MARKER, make_run_dir, mark_owner, owner_of, process_start_time, sweep_stale
from tests.toy_project import CONFTEST, INI, ROOT, TOY

pytest_plugins = ["pytester"]

RUN_TESTS = """
import json, os, signal
from pathlib import Path


def test_uses_the_stack(stack):
    Path(os.environ["RUN_OUT"]).write_text(json.dumps({"ports": stack.ports, "run_dir": str(stack.run_dir)}))
    if os.environ.get("DIE"):
        os.kill(os.getpid(), signal.SIGKILL)  # the whole run dies, as `kill -9` or the OOM killer would
"""


@pytest.fixture
def project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[pytest.Pytester]:
    """A throwaway project running Throughline's plugins on the toy target, with a temp dir of its
    own: every Throughline start on the machine sweeps the shared one, so a run elsewhere (the
    other xdist worker, another checkout) could sweep this test's killed run dir first."""
    for name in [n for n in os.environ if n.startswith(("THROUGHLINE_", "PYTEST_XDIST"))]:
        monkeypatch.delenv(name)
    private_tmp = Path(tempfile.mkdtemp(prefix="tl-rundirs-"))  # short: sockets live in run dirs
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("RUN_OUT", str(tmp_path / "run.json"))
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_run=RUN_TESTS)
    yield pytester
    shutil.rmtree(private_tmp, ignore_errors=True)


def _run(project: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, object]]:
    result = project.runpytest_subprocess(str(project.path), f"--target={TOY}", "--reports", "", *args)
    return result, json.loads(Path(os.environ["RUN_OUT"]).read_text())


def test_a_normal_run_removes_its_run_dir_and_keep_run_dir_keeps_it(project: pytest.Pytester) -> None:
    result, seen = _run(project)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    assert not Path(str(seen["run_dir"])).exists(), f"a normal run left {seen['run_dir']} behind"

    result, seen = _run(project, "--keep-run-dir")
    kept = Path(str(seen["run_dir"]))
    try:
        assert result.ret == 0, result.stdout.str() + result.stderr.str()
        assert kept.is_dir(), "--keep-run-dir removed the run directory"
        assert owner_of(kept) is None, (
            "a kept run dir carries an owner marker, so a later sweep would take it"
        )
    finally:
        shutil.rmtree(kept, ignore_errors=True)


def test_a_sigkilled_run_leaves_no_process_and_the_next_start_sweeps_its_dir(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIE", "1")
    result, seen = _run(project)
    assert result.ret == -signal.SIGKILL, result.stdout.str() + result.stderr.str()
    left = Path(str(seen["run_dir"]))
    ports: dict[str, int] = seen["ports"]  # type: ignore[assignment]
    # PDEATHSIG tells each service the moment the run dies; it then takes a moment to exit.
    deadline = time.monotonic() + 15
    while not all(is_port_free(p) for p in ports.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(is_port_free(p) for p in ports.values()), f"a service outlived the killed run by 15 s: {ports}"
    assert left.is_dir() and owner_of(left) is not None, "the killed run's dir should be left, marked"
    dead_pid = owner_of(left)[0]  # type: ignore[index]

    monkeypatch.delenv("DIE")
    result, _ = _run(project)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    assert not left.exists(), f"the next start did not sweep {left}"
    line = f"throughline: swept stale run dir {left} (owner pid {dead_pid} gone, "
    assert line in result.stderr.str(), f"the sweep did not say what it removed:\n{result.stderr.str()}"


def test_the_sweep_keeps_live_owners_and_takes_a_reused_pid(tmp_path: Path) -> None:
    live = make_run_dir(parent=tmp_path)
    (live / "data").write_text("x" * 2_000_000)
    reused = make_run_dir(parent=tmp_path)
    mark_owner(reused)
    data = json.loads((reused / MARKER).read_text())
    data["start"] = (process_start_time(os.getpid()) or 0) + 1  # same pid, another process's start
    (reused / MARKER).write_text(json.dumps(data))
    unmarked = tmp_path / "throughline-unmarked"
    unmarked.mkdir()
    said: list[str] = []

    swept = sweep_stale(tmp_path, say=said.append)

    assert live.is_dir(), "the sweep removed the run dir of a live owner"
    assert unmarked.is_dir(), "the sweep removed a dir it cannot tell the owner of"
    assert not reused.exists(), "a reused pid kept a dead run's dir alive"
    assert [s.path for s in swept] == [reused]
    assert said == [f"throughline: swept stale run dir {reused} (owner pid {os.getpid()} gone, 0 MB)"]
