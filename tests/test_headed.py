"""Headed without a display: one clear line before anything starts; under xvfb-run it just runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.browser import NO_DISPLAY

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_CHROMIUM = next(
    (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None
)
INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
asyncio_default_test_loop_scope = session
addopts = -p no:cacheprovider
"""
PAGE_TEST = """
async def test_headed_page(page):
    await page.set_content("<h1>windowed</h1>")
    assert await page.inner_text("h1") == "windowed"
"""


def _no_display_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine without a display and without xvfb-run on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env = {k: v for k, v in env.items() if not k.startswith(("THROUGHLINE_", "PYTEST_XDIST"))}
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/local/bin:{tmp_path}"  # /usr/bin (xvfb-run) left out
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_cli_headed_without_a_display_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--headed", "--reports", str(tmp_path / "reports")],
        cwd=ROOT,
        env=_no_display_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines() == [f"throughline: {NO_DISPLAY}"], done.stderr
    assert "xvfb-run" in done.stderr and "trace" in done.stderr
    assert not (tmp_path / "reports").exists(), "a refused run wrote reports"


def test_pytest_headed_without_a_display_stops_before_launching(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_page=PAGE_TEST)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "harness.plugin_browser", "--headed"],
        cwd=pytester.path,
        env=_no_display_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert f"ERROR: {NO_DISPLAY}" in out, out
    assert "no step failed" not in out and "Traceback" not in out and "Playwright" not in out, out
    assert len(out.strip().splitlines()) <= 2, f"more than one clear line:\n{out}"


@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="xvfb is not installed (apt-get install xvfb)")
def test_headed_runs_under_xvfb_run(pytester: pytest.Pytester, tmp_path: Path) -> None:
    if SYSTEM_CHROMIUM is None:
        pytest.skip("no system Chromium installed")
    pytester.makeini(INI)
    pytester.makepyfile(test_page=PAGE_TEST)
    env = _no_display_env(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    xvfb_run = shutil.which("xvfb-run")
    assert xvfb_run is not None
    done = subprocess.run(
        [xvfb_run, "-a", sys.executable, "-m", "pytest", "-p", "harness.plugin_browser", "--headed", "-q"],
        cwd=pytester.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
