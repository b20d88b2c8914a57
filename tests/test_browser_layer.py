"""The browser plugin end to end: real Chromium, real pytest runs (pytester), real artifacts."""

from __future__ import annotations

import html
import os
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.browser import BrowserNotFoundError, BrowserSettings, resolve_chromium_executable

pytest_plugins = ["pytester"]

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLXNlY3JldC14eXo"
SIGNATURE = "c2lnbmF0dXJlLXNlY3JldC14eXo"
VENV_BIN = Path(sys.executable).parent
SYSTEM_CHROMIUM = next(
    (
        p
        for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
        if Path(p).exists()
    ),
    None,
)

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
asyncio_default_test_loop_scope = session
"""

FAILING_JOURNEY = f'''
import json

from websockets.asyncio.server import serve

from harness import report
from harness.journey import journey
from harness.steps import step

JWT = "{JWT}"

report.register_log_tail_provider(lambda: {{"backend": "GET /health 200\\nAuthorization: Bearer " + JWT + "\\nworker crashed"}})
report.register_environment_provider(lambda: {{"mode": "local",
    "components": {{"postgres": "real", "llm": "stand-in: OpenAI-compatible"}}}})


async def _server(conn):
    async for _message in conn:
        await conn.send(json.dumps({{"type": "welcome", "payload": {{"token": JWT}}}}))


@journey(name="Greeting journey", priority="P0", mrr=50_000, components=["frontend", "websocket"])
async def test_greeting(page, ws_recorder, data_trail):
    async with serve(_server, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{{server.sockets[0].getsockname()[1]}}/ws"
        async with step("Open the page"):
            await page.set_content("<h1>Hello</h1>")
            await page.evaluate(
                "([url, token]) => {{ const ws = new WebSocket(url);"
                " ws.onopen = () => ws.send(JSON.stringify({{type: 'auth', access_token: token}})); }}",
                [url, JWT],
            )
            await ws_recorder.wait_for("welcome")
        data_trail.append(("users row", "SELECT email FROM users WHERE email = $1", {{"email": "a@example.com"}}))
        async with step("Check the greeting"):
            assert await page.inner_text("h1") == "Goodbye", "page greets with 'Hello' instead of 'Goodbye'"


@journey(name="Quiet journey", priority="P1", mrr=7_000, components=["frontend"])
async def test_quiet(page):
    await page.set_content("<p>fine</p>")
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def chromium_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """The inner runs use the system Chromium (Playwright's bundled build cannot be downloaded here)."""
    if SYSTEM_CHROMIUM is None:
        pytest.skip("no system Chromium installed")
    for name in list(os.environ):
        if name.startswith("THROUGHLINE_"):
            monkeypatch.delenv(name)
    return SYSTEM_CHROMIUM


def test_should_attach_screenshot_trace_and_failed_step_to_a_failing_journey(
    pytester: pytest.Pytester, chromium_env: str
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_journey=FAILING_JOURNEY)

    result = pytester.runpytest_subprocess(
        "-p",
        "harness.plugin_browser",
        "--html=report.html",
        "--self-contained-html",
        "--junitxml=junit.xml",
        "-p",
        "no:cacheprovider",
    )

    result.assert_outcomes(failed=1, passed=1)
    out = result.stdout.str()
    assert "step 2/2 'Check the greeting' failed after" in out
    assert "page greets with 'Hello' instead of 'Goodbye'" in out
    assert "Data trail" in out and "SELECT email FROM users" in out
    assert "WebSocket frames (page)" in out and "welcome" in out and "auth" in out
    assert "Service log: backend" in out and "worker crashed" in out
    assert "playwright show-trace" in out
    assert SIGNATURE not in out, "a JWT leaked into the terminal output"

    artifacts = pytester.path / "reports" / "artifacts"
    failed_dir = next(artifacts.glob("*test-greeting*"))
    with zipfile.ZipFile(failed_dir / "trace.zip") as trace:
        assert any(name.endswith(".trace") for name in trace.namelist())
    assert (failed_dir / "test-failed-1.png").read_bytes().startswith(b"\x89PNG")
    assert not list(artifacts.glob("*test-quiet*")), "a passing test kept artifacts (retain-on-failure)"

    raw = (pytester.path / "report.html").read_text()
    page = html.unescape(raw)
    assert SIGNATURE not in raw and SIGNATURE not in page, "a JWT leaked into the HTML report"
    assert "redacted" in page
    assert "Check the greeting" in page and "failed after" in page
    assert "Release summary" in page and "RELEASE BLOCKED" in page
    assert "MRR protected $7,000; MRR at risk $50,000" in page
    assert "1 real / 1 stand-in (50% real)" in page
    assert "playwright show-trace" in page and "data:image/png;base64" in page
    assert SIGNATURE not in (pytester.path / "junit.xml").read_text()


ANIMATED_PAGE = """
async def test_animated(page):
    await page.set_content(
        "<style>@keyframes s {to {transform: rotate(360deg)}} i {display:block;width:40px;height:40px;"
        "background:red;animation:s .2s linear infinite}</style><i></i><button>go</button>"
    )
    await page.click("button")
    await page.wait_for_timeout(600)  # frames to film: the test is about the trace's filmstrip
"""


def _trace_events(pytester: pytest.Pytester) -> str:
    trace_dir = next((pytester.path / "reports" / "artifacts").glob("*test-animated*"))
    with zipfile.ZipFile(trace_dir / "trace.zip") as trace:
        return "".join(trace.read(n).decode() for n in trace.namelist() if n.endswith(".trace"))


@pytest.mark.parametrize("filmstrip", [False, True], ids=["default", "TRACE_SCREENSHOTS"])
def test_should_keep_dom_snapshots_in_traces_and_film_only_when_asked(
    pytester: pytest.Pytester, chromium_env: str, monkeypatch: pytest.MonkeyPatch, filmstrip: bool
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_animated=ANIMATED_PAGE)
    if filmstrip:
        monkeypatch.setenv("THROUGHLINE_TRACE_SCREENSHOTS", "1")
    result = pytester.runpytest_subprocess(
        "-p", "harness.plugin_browser", "--tracing", "on", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1)
    events = _trace_events(pytester)
    assert '"type":"frame-snapshot"' in events, "the trace lost its DOM snapshots"
    assert ('"type":"screencast-frame"' in events) is filmstrip


def test_should_use_the_configured_chromium_and_fail_clearly_when_it_is_missing(tmp_path: Path) -> None:
    if SYSTEM_CHROMIUM is None:
        pytest.skip("no system Chromium installed")
    explicit = BrowserSettings(executable=SYSTEM_CHROMIUM, executable_source="THROUGHLINE_CHROMIUM")
    assert resolve_chromium_executable(explicit, bundled=None) == (SYSTEM_CHROMIUM, "THROUGHLINE_CHROMIUM")

    missing = BrowserSettings(executable=str(tmp_path / "chrome"), executable_source="THROUGHLINE_CHROMIUM")
    with pytest.raises(BrowserNotFoundError, match="THROUGHLINE_CHROMIUM.*does not exist"):
        resolve_chromium_executable(missing, bundled=None)

    fallback = BrowserSettings(chromium_candidates=(str(tmp_path / "none"), SYSTEM_CHROMIUM))
    path, source = resolve_chromium_executable(fallback, bundled=str(tmp_path / "bundled" / "chrome"))
    assert path == SYSTEM_CHROMIUM and "system Chromium" in source

    nothing = BrowserSettings(chromium_candidates=(str(tmp_path / "a"), str(tmp_path / "b")))
    with pytest.raises(BrowserNotFoundError) as failure:
        resolve_chromium_executable(nothing, bundled=str(tmp_path / "bundled" / "chrome"))
    message = str(failure.value)
    assert str(tmp_path / "a") in message and "bundled" in message
    assert "THROUGHLINE_CHROMIUM" in message and "apt-get install chromium" in message


def test_should_prefer_the_headless_shell_when_headless_and_full_chromium_when_headed(tmp_path: Path) -> None:
    shell, full = tmp_path / "chromium-headless-shell", tmp_path / "chromium"
    for exe in (shell, full):
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    both = {
        "headless_shell_candidates": (str(tmp_path / "gone"), str(shell)),
        "chromium_candidates": (str(full),),
    }
    assert resolve_chromium_executable(BrowserSettings(**both), bundled=None) == (
        str(shell),
        f"system headless shell ({shell})",
    )
    headed = BrowserSettings(headed=True, **both)
    assert resolve_chromium_executable(headed, bundled=None) == (str(full), f"system Chromium ({full})")
    shell.unlink()
    assert resolve_chromium_executable(BrowserSettings(**both), bundled=None)[0] == str(full)


def test_should_report_a_missing_chromium_as_a_setup_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, chromium_env: str
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile("async def test_page(page):\n    await page.set_content('<p>x</p>')\n")
    monkeypatch.setenv("THROUGHLINE_CHROMIUM", "/nonexistent/chrome")

    result = pytester.runpytest_subprocess("-p", "harness.plugin_browser", "-p", "no:cacheprovider")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*BrowserNotFoundError*'/nonexistent/chrome' (from THROUGHLINE_CHROMIUM) does not exist*"]
    )


@pytest.fixture
def run_server(chromium_env: str) -> Iterator[str]:
    """`playwright run-server` on a free port; --unsafe so it honours the client's executablePath."""
    port = _free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "playwright"), "run-server", "--port", str(port), "--host", "127.0.0.1", "--unsafe"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                pass
            try:
                proc.wait(timeout=0.1)  # doubles as the poll interval and the liveness check
            except subprocess.TimeoutExpired:
                pass
            else:
                raise RuntimeError(f"playwright run-server exited {proc.returncode}: {proc.stdout.read()!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("playwright run-server did not listen within 30 s")
        yield f"ws://127.0.0.1:{port}/"
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def test_should_drive_a_remote_browser_from_run_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, run_server: str, chromium_env: str
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        async def test_remote(browser, page, connect_options, browser_type_launch_args):
            await page.set_content("<p id='where'>remote</p>")
            assert await page.inner_text("#where") == "remote"
            assert connect_options["endpoint"].startswith("ws://127.0.0.1:")
            assert browser_type_launch_args["executable_path"] == "CHROMIUM"
            assert browser.is_connected()
        """.replace("CHROMIUM", chromium_env)
    )
    monkeypatch.setenv("THROUGHLINE_CHROMIUM", chromium_env)

    result = pytester.runpytest_subprocess(
        "-p", "harness.plugin_browser", "-p", "no:cacheprovider", f"--browser-ws={run_server}"
    )

    result.assert_outcomes(passed=1)
