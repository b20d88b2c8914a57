"""pytest plugin: shards, workers and a folder of its own for every run.

- `--shard i/n` runs the i-th of n shards of the suite, balanced by the recorded durations of
  the target (targets/<name>/durations.json, refreshed by `make durations`), with pytest-split's
  least-duration algorithm: every test lands in exactly one shard, for any n. A test without a
  recorded duration counts as the average one, so the spread stays stable.
- Under pytest-xdist (`-n N`) every worker is a process of its own with its own stack (ports,
  run directory, stores) from the session fixtures, and its own artifacts folder (`gw0/`, ...):
  pytest-playwright-asyncio wipes its output folder when a session starts, so workers never share
  one.
- `--reports DIR` gives the run its own folder, DIR/runs/<run id>/, with report.html, junit.xml,
  results.json (harness/results.py) and artifacts/; at the end DIR/latest points at it. Two runs
  in one checkout at once keep both sets.

Bad input (`--shard 3/2`, a corrupt durations file) is one line naming it, before anything is
written or started.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.process import tail
from harness.results import RESULTS_FILE, git_commit
from harness.rundirs import remove_run_dir
from harness.target import TargetError, load_target

SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
DURATIONS_FILE = "durations.json"
RUN_DIR_KEY = pytest.StashKey[Path]()
RESULTS_PATH_KEY = pytest.StashKey[Path]()
SHARD_KEY = pytest.StashKey["Shard"]()
WORKER_RUN_DIR = "throughline_run_dir"  # xdist workerinput: the controller's run folder


class ParallelError(ValueError):
    """Bad shard, worker or durations input; the message is one line for the user."""


@dataclass(frozen=True)
class Shard:
    index: int
    total: int

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"


def parse_shard(text: str) -> Shard:
    """`i/n` with 1 <= i <= n; ParallelError otherwise."""
    match = SHARD_RE.match(text or "")
    if not match:
        raise ParallelError(f"--shard {text!r}: expected i/n, e.g. --shard 1/3")
    index, total = int(match.group(1)), int(match.group(2))
    if total < 1:
        raise ParallelError(f"--shard {text}: the number of shards must be at least 1")
    if not 1 <= index <= total:
        raise ParallelError(f"--shard {text}: the shard must be between 1 and {total}")
    return Shard(index, total)


def parse_workers(value: str | int) -> int:
    """A worker count of at least 1; ParallelError otherwise."""
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ParallelError(f"-n {value!r}: the number of workers must be a whole number >= 1") from None
    if count < 1:
        raise ParallelError(f"-n {value}: the number of workers must be at least 1")
    return count


def load_durations(path: Path) -> dict[str, float]:
    """The recorded durations {node id: seconds}; {} when there is no file; ParallelError when corrupt."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ParallelError(
            f"{path}: corrupt durations file ({type(exc).__name__}: {exc}); "
            "refresh it with `make durations` or delete it"
        ) from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
        for k, v in data.items()
    ):
        raise ParallelError(
            f"{path}: corrupt durations file (expected a JSON object of test id -> seconds); "
            "refresh it with `make durations` or delete it"
        )
    return {k: float(v) for k, v in data.items()}


def durations_path(target_folder: Path) -> Path:
    """Where a target's recorded journey durations live."""
    return target_folder / DURATIONS_FILE


def new_run_id(shard: Shard | None) -> str:
    """Sortable and unique among runs on this machine: time, pid, shard."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{os.getpid()}" + (f"-shard{shard.index}of{shard.total}" if shard else "")


def point_latest(reports: Path, run_dir: Path) -> None:
    """reports/latest -> runs/<id>, replaced atomically (a symlink renamed over the old one)."""
    link = reports / "latest"
    tmp = reports / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(run_dir, reports))
    tmp.replace(link)


# -- options --------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("throughline-parallel", "Throughline shards, workers and run folders")
    group.addoption(
        "--shard",
        default=os.environ.get("THROUGHLINE_SHARD") or None,
        help="run shard i of n (i/n), balanced by the target's recorded durations "
        "(targets/<name>/durations.json); env THROUGHLINE_SHARD",
    )
    group.addoption(
        "--reports",
        default=os.environ.get("THROUGHLINE_REPORTS") or None,
        help="write this run's report.html, junit.xml, results.json and artifacts under "
        "DIR/runs/<run id>/ and point DIR/latest at it; env THROUGHLINE_REPORTS",
    )
    group.addoption(
        "--results",
        default=None,
        help="write the run's machine-readable results (JSON, harness/results.py) here",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Translate --shard for pytest-split and pick the run's folders, before any plugin configures."""
    try:
        _configure_shard(config)
    except ParallelError as exc:
        raise pytest.UsageError(str(exc)) from None
    _configure_folders(config)


def _configure_shard(config: pytest.Config) -> None:
    text = config.getoption("--shard", None)
    if not text:
        return
    shard = parse_shard(str(text))
    config.stash[SHARD_KEY] = shard
    given = Path(config.getoption("durations_path", "") or "")
    if given.name == ".test_durations" and not given.exists():  # pytest-split's default: use the target's
        try:
            target = load_target(config.getoption("--target", None))
        except TargetError as exc:
            raise ParallelError(str(exc)) from None
        given = durations_path(target.folder)
    load_durations(given)  # a corrupt file fails here, in one line
    config.option.durations_path = str(given)
    config.option.splits = shard.total
    config.option.group = shard.index
    config.option.splitting_algorithm = "least_duration"


def _configure_folders(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    run_dir: Path | None = None
    if workerinput is not None and workerinput.get(WORKER_RUN_DIR):
        run_dir = Path(workerinput[WORKER_RUN_DIR])
    elif workerinput is None and config.getoption("--reports", None):
        reports = Path(config.getoption("--reports")).absolute()
        shard = config.stash.get(SHARD_KEY, None)
        run_dir = reports / "runs" / new_run_id(shard)
        while run_dir.exists():  # two runs started in one second by one pid: never share
            run_dir = run_dir.with_name(run_dir.name + "x")
        run_dir.mkdir(parents=True)
        if getattr(config.option, "htmlpath", None) is None and hasattr(config.option, "htmlpath"):
            config.option.htmlpath = str(run_dir / "report.html")
            config.option.self_contained_html = True
        if getattr(config.option, "xmlpath", None) is None:
            config.option.xmlpath = str(run_dir / "junit.xml")
        config.stash[RESULTS_PATH_KEY] = run_dir / RESULTS_FILE
    if run_dir is not None:
        config.stash[RUN_DIR_KEY] = run_dir
    explicit = config.getoption("--results", None)
    if explicit and workerinput is None:
        config.stash[RESULTS_PATH_KEY] = Path(explicit).absolute()


def artifacts_dir_for(config: pytest.Config, default: Path) -> Path:
    """This process's Playwright artifacts folder: the run folder's, and one per xdist worker."""
    run_dir = config.stash.get(RUN_DIR_KEY, None)
    base = run_dir / "artifacts" if run_dir is not None else default
    worker = os.environ.get("PYTEST_XDIST_WORKER") if hasattr(config, "workerinput") else None
    return base / worker if worker else base


def pytest_configure_node(node: Any) -> None:
    """xdist (controller): every worker writes its artifacts into this run's folder."""
    run_dir = node.config.stash.get(RUN_DIR_KEY, None)
    if run_dir is not None:
        node.workerinput[WORKER_RUN_DIR] = str(run_dir)


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    shard = config.stash.get(SHARD_KEY, None)
    if shard is not None:
        lines.append(f"shard: {shard} (durations {config.option.durations_path})")
    run_dir = config.stash.get(RUN_DIR_KEY, None)
    if run_dir is not None and not hasattr(config, "workerinput"):
        lines.append(f"run folder: {run_dir}")
    return lines


# -- a worker that crashes ----------------------------------------------------------------------
def note_worker_stack(config: pytest.Config, run_dir: Path | None) -> None:
    """A worker (xdist) tells the controller where its stack lives, as soon as it is up: if the
    worker dies, the controller shows that stack's log tails and removes what it left."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    folder = config.stash.get(RUN_DIR_KEY, None)
    if not worker or folder is None or run_dir is None or not hasattr(config, "workerinput"):
        return
    path = folder / "workers" / f"{worker}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": os.getpid(), "stack_run_dir": str(run_dir)}))


def pytest_handlecrashitem(crashitem: str, report: pytest.TestReport, sched: Any) -> None:
    """xdist (controller): a worker died running `crashitem`. Name it, show its stack's log tails,
    and remove the stack's run directory (its services died with the worker: PDEATHSIG)."""
    node = getattr(report, "node", None)
    worker = getattr(getattr(node, "gateway", None), "id", None) or "?"
    folder = node.config.stash.get(RUN_DIR_KEY, None) if node is not None else None
    lines = [f"worker {worker} crashed (the process died) while running {crashitem}"]
    info_path = folder / "workers" / f"{worker}.json" if folder is not None else None
    try:
        info = json.loads(info_path.read_text()) if info_path is not None else None
    except (OSError, ValueError):
        info = None
    if info is None:
        lines.append("its stack's log tails are unknown (the worker died before its stack was up)")
    else:
        stack_dir = Path(info["stack_run_dir"])
        for log in sorted((stack_dir / "logs").glob("*.log")):
            report.sections.append((f"Service log: {log.stem} ({worker})", tail(log, 40)))  # outputs redact
        lines.append(f"its stack ({stack_dir}): service log tails below; removed now")
        remove_run_dir(stack_dir)
    report.longrepr = "\n".join(lines)
    report.sections.insert(0, ("Failed step", lines[0]))


# -- the end: results, the latest pointer, an empty shard ----------------------------------------
@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput"):
        return
    shard = config.stash.get(SHARD_KEY, None)
    if shard is not None and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and not session.testsfailed:
        # More shards than tests: this shard's share is empty, which is not a failure.
        session.exitstatus = pytest.ExitCode.OK
    path = config.stash.get(RESULTS_PATH_KEY, None)
    plugin = config.pluginmanager.get_plugin("throughline-report")
    if path is not None and plugin is not None:
        results = plugin.finish()
        results.shard = str(shard) if shard else None
        for rec in results.tests.values():
            rec.shard = results.shard
        results.commit = git_commit(config.rootpath)
        results.write(path)
    run_dir = config.stash.get(RUN_DIR_KEY, None)
    reports = config.getoption("--reports", None)
    if run_dir is not None and reports:
        point_latest(Path(reports).absolute(), run_dir)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    run_dir = config.stash.get(RUN_DIR_KEY, None)
    if run_dir is not None and not hasattr(config, "workerinput"):
        terminalreporter.write_sep("-", f"this run's report, JUnit, results and artifacts: {run_dir}")
