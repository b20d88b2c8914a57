"""pytest plugin: `--platform-coverage`, the coverage of the platform under test.

The controller (or the only process, serially) picks the coverage folder: the run folder's
`coverage/` under `--reports`, else a temporary one; xdist workers get it through workerinput,
so every worker's stack writes into the same per-service folders. At the end, after every
stack has stopped (and saved), the controller combines each service's data and hands the
figures to the results (results.json `platform_coverage`) and the report.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from harness import platform_coverage
from harness.plugin_parallel import RUN_DIR_KEY
from harness.stack import PROJECT, declaration_of
from harness.target import load_target

COVERAGE_DIR_KEY = pytest.StashKey[Path]()
FIGURES_KEY = pytest.StashKey["dict[str, Any] | None"]()
WORKER_COVERAGE_DIR = "throughline_coverage_dir"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("throughline", "Throughline stack")
    group.addoption(
        "--platform-coverage",
        action="store_true",
        default=False,
        help="run the platform's Python services under coverage.py and report lines and branches "
        "covered per service and per file (docs/platform-coverage.md)",
    )


def coverage_dir_of(config: pytest.Config) -> Path | None:
    """Where this session's platform coverage data goes; None without --platform-coverage."""
    return config.stash.get(COVERAGE_DIR_KEY, None)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("--platform-coverage", False):
        return
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        if workerinput.get(WORKER_COVERAGE_DIR):
            config.stash[COVERAGE_DIR_KEY] = Path(workerinput[WORKER_COVERAGE_DIR])
        return
    target = load_target(config.getoption("--target", None))
    declaration = declaration_of(target)
    if declaration is None:
        raise pytest.UsageError(
            f"--platform-coverage: target '{target.name}' runs elsewhere; only a stack the harness "
            "starts can be measured"
        )
    try:
        platform_coverage.check_declaration(declaration, {"python": sys.executable, "project": str(PROJECT)})
    except platform_coverage.PlatformCoverageError as exc:
        raise pytest.UsageError(str(exc)) from None
    run_dir = config.stash.get(RUN_DIR_KEY, None)
    if run_dir is not None:
        folder = run_dir / "coverage"
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="throughline-coverage-"))
    config.stash[COVERAGE_DIR_KEY] = folder


def pytest_configure_node(node: Any) -> None:
    """xdist (controller): every worker's stack writes into this session's coverage folder."""
    folder = coverage_dir_of(node.config)
    if folder is not None:
        node.workerinput[WORKER_COVERAGE_DIR] = str(folder)


def pytest_report_header(config: pytest.Config) -> list[str]:
    folder = coverage_dir_of(config)
    if folder is None or hasattr(config, "workerinput"):
        return []
    return [f"platform coverage: {folder}"]


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Combine per service, before results.json and the HTML report are written."""
    config = session.config
    folder = coverage_dir_of(config)
    if folder is None or hasattr(config, "workerinput"):
        return
    figures = platform_coverage.summarize(folder)
    plugin = config.pluginmanager.get_plugin("throughline-report")
    if plugin is not None:
        plugin.results.platform_coverage = figures
    config.stash[FIGURES_KEY] = figures


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    folder = coverage_dir_of(config)
    if folder is None or hasattr(config, "workerinput"):
        return
    figures = config.stash.get(FIGURES_KEY, None)
    terminalreporter.write_sep("-", "platform coverage")
    if not figures:
        terminalreporter.write_line(f"no coverage data was saved under {folder}")
        return
    for line in platform_coverage.summary_lines(figures):
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"data: {folder}")
