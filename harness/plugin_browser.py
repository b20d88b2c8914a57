"""pytest plugin: the browser layer (Chromium, contexts, pages, WebSocket recorders, failure evidence).

Built on pytest-playwright-asyncio (its `playwright`, `browser_type`, `browser` fixtures,
its CLI options --headed/--slowmo/--tracing/--video/--screenshot/--output and its
per-context trace/screenshot/video recorder). Throughline overrides single fixtures:

    session:  browser_settings, browser_type_launch_args, connect_options, launch_browser,
              browser_context_args (+ upstream playwright, browser_type, browser)
    function: new_context (factory: context + page + ws recorder per user), browser_user,
              context, page, ws_recorder, data_trail

and adds --browser-executable and --browser-ws.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
import pytest_asyncio
from _pytest._code.code import ReprFileLocation
from playwright.async_api import Browser, BrowserContext, BrowserType, Error, Page, expect
from pytest_playwright_asyncio.pytest_playwright import slugify as _slugify

from harness import report, results
from harness.browser import (
    BrowserSettings,
    BrowserSettingsError,
    headed_display_error,
    launch_options_header,
    load_settings,
    resolve_chromium_executable,
)
from harness.journey import MARKER_HELP, JourneyInfo, JourneyMarkerError, journey_info
from harness.plugin_parallel import artifacts_dir_for
from harness.redact import redact
from harness.steps import StepLog, count_steps, start_step_log
from harness.ws_recorder import WsRecorder

SETTINGS_KEY = pytest.StashKey[BrowserSettings]()
JOURNEY_KEY = pytest.StashKey[JourneyInfo]()

_UPSTREAM_NAME = "playwright-asyncio"


@dataclass
class BrowserUser:
    """One browser user: its own context, a page already created, and the recorder of its WebSockets."""

    label: str
    context: BrowserContext
    page: Page
    ws: WsRecorder


class NewContext(Protocol):
    def __call__(self, label: str | None = None, **context_args: Any) -> Awaitable[BrowserUser]: ...


@dataclass
class TestEvidence:
    """What one test leaves for its report."""

    step_log: StepLog
    data_trail: report.DataTrail
    recorders: list[WsRecorder] = field(default_factory=list)
    failure_attached: bool = False


EVIDENCE_KEY = pytest.StashKey[TestEvidence]()
KEPT_ARTIFACTS_KEY = pytest.StashKey[list[tuple[str, str]]]()


# -- options and configuration ------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    # With `-p harness.plugin_browser` this runs before entry points load; register the upstream
    # plugin under its entry-point name so it is loaded exactly once either way.
    if pluginmanager.get_plugin(_UPSTREAM_NAME) is None:
        import pytest_playwright_asyncio.pytest_playwright as upstream

        if not pluginmanager.is_registered(upstream):
            pluginmanager.register(upstream, _UPSTREAM_NAME)
    group = parser.getgroup("throughline-browser", "Throughline browser (see playwright.config.py)")
    group.addoption(
        "--browser-executable",
        default=None,
        help="Chromium binary to launch (env THROUGHLINE_CHROMIUM); default: Playwright's bundled "
        "build if installed, else /usr/bin/chromium, chromium-browser, google-chrome",
    )
    group.addoption(
        "--detection",
        default=os.environ.get("THROUGHLINE_DETECTION") or None,
        help="show this `throughline prove` result (its JSON, e.g. reports/prove.json) as the HTML "
        "report's Detection section (env THROUGHLINE_DETECTION)",
    )
    group.addoption(
        "--browser-ws",
        default=None,
        help="connect to a `playwright run-server` at this ws:// endpoint instead of launching "
        "(env THROUGHLINE_BROWSER_WS)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    try:
        settings = load_settings(config)
    except BrowserSettingsError as exc:
        raise pytest.UsageError(str(exc)) from None
    no_display = headed_display_error(settings.headed, settings.browser_ws)
    if no_display is not None:  # before anything starts, instead of Playwright's 60-line error
        raise pytest.UsageError(no_display)
    config.stash[SETTINGS_KEY] = settings
    # pytest-playwright-asyncio reads its options from config.option: give it the effective values.
    for dest, value in (
        ("tracing", settings.tracing),
        ("video", settings.video),
        ("screenshot", settings.screenshot),
        ("output", str(artifacts_dir_for(config, settings.artifacts_dir))),
        ("headed", settings.headed),
        ("slowmo", settings.slow_mo_ms),
    ):
        if hasattr(config.option, dest):
            setattr(config.option, dest, value)
    expect.set_options(timeout=settings.expect_timeout_ms)
    config.stash[report.JOURNEYS_KEY] = {}
    # Registered now, after every entry-point and -p plugin, so these fixtures override upstream's.
    if not config.pluginmanager.has_plugin("throughline-browser-fixtures"):
        config.pluginmanager.register(BrowserFixtures(), "throughline-browser-fixtures")
    if not config.pluginmanager.has_plugin("throughline-report"):
        config.pluginmanager.register(report.ReportPlugin(config), "throughline-report")


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(
    collector: pytest.Collector, name: str, obj: object
) -> Generator[None, Any, Any]:
    result = yield
    items = result if isinstance(result, list) else [result] if result is not None else []
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        try:
            journey_info(item)
        except JourneyMarkerError as exc:
            # A collection error of the module: the release summary must never silently miss a journey.
            raise collector.CollectError(f"{item.nodeid}: {exc}") from None
    return result


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Items may have been replaced after makeitem (pytest-asyncio does), so read the markers here.
    journeys = config.stash.setdefault(report.JOURNEYS_KEY, {})
    for item in items:
        try:
            info = journey_info(item)
        except JourneyMarkerError:
            continue  # already reported as a collection error
        if info is not None:
            item.stash[JOURNEY_KEY] = info
            journeys[item.nodeid] = info


# -- per-test evidence ------------------------------------------------------------------
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    evidence = TestEvidence(
        step_log=start_step_log(count_steps(getattr(item, "obj", None))),
        data_trail=report.DataTrail(),
    )
    item.stash[EVIDENCE_KEY] = evidence
    report.set_current_trail(evidence.data_trail)


# tryfirst: outermost, so the evidence follows the final verdict (a known defect's xfail undone by
# the target plugin, a not-applicable skip) and the redaction sees the final text.
@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    evidence = item.stash.get(EVIDENCE_KEY, None)
    extras: list[Any] = list(getattr(rep, "extras", []))
    _attach_results(item, rep, evidence)
    # A strict XPASS (a known defect that no longer shows) fails without an error: no failure evidence.
    is_xpass = rep.failed and isinstance(rep.longrepr, str) and rep.longrepr.startswith("[XPASS(strict)]")
    if evidence is not None:
        log = evidence.step_log
        if rep.when == "call" and log.records and (not rep.failed or is_xpass):
            extra = report.html_extra(item.config, _steps_html(item, log))
            if extra:
                extras.append(extra)
        if rep.failed and not is_xpass and not evidence.failure_attached:
            evidence.failure_attached = True
            failed = log.failed_step()
            headline = (
                f"{log.label(failed)} failed after {failed.duration or 0:.1f} s: {failed.error}"
                if failed
                else None
            )
            sections = report.failure_text_sections(
                headline,
                log.format() if log.records else None,
                evidence.recorders,
                evidence.data_trail,
                report.collect_log_tails(),
            )
            rep.sections.extend(sections)
            extra = report.html_extra(
                item.config,
                _steps_html(
                    item, log, headline=headline or "no step failed: the failure happened outside any step()"
                )
                + "".join(report.text_block(t, s) for t, s in sections[2:]),
            )
            if extra:
                extras.append(extra)
        if rep.when == "teardown":
            report.set_current_trail(None)
    if rep.when == "teardown":
        kept = [
            (k, v)
            for k, v in rep.user_properties
            if k in ("playwright_trace", "playwright_screenshot", "playwright_video")
        ]
        if kept:
            lines = []
            for kind, path in kept:
                if kind == "playwright_trace":
                    lines.append(f"trace: {path}\n  open it with: playwright show-trace {path}")
                else:
                    lines.append(f"{kind.removeprefix('playwright_')}: {path}")
            text = "\n".join(lines)
            rep.sections.append(("Playwright artifacts", text))
            item.config.stash.setdefault(KEPT_ARTIFACTS_KEY, []).append((item.nodeid, text))
            extra = report.html_extra(item.config, report.text_block("Playwright artifacts", text))
            if extra:
                extras.append(extra)
    _redact_report(rep)
    if extras:
        rep.extras = extras  # type: ignore[attr-defined]


def _attach_results(item: pytest.Item, rep: pytest.TestReport, evidence: TestEvidence | None) -> None:
    """What the results (harness/results.py) need of this test, on the report itself: under
    pytest-xdist the report is all that reaches the controller."""
    info = item.stash.get(JOURNEY_KEY, None)
    if info is not None:
        setattr(rep, results.JOURNEY_ATTR, report.journey_info_dict(info))
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        setattr(rep, results.WORKER_ATTR, worker)
    if evidence is not None and rep.when == "call":
        setattr(rep, results.STEPS_ATTR, [_step_dict(r) for r in evidence.step_log.records])
        setattr(rep, results.PROBES_ATTR, evidence.data_trail.as_dicts())
    if rep.when == "teardown":
        setattr(rep, results.ENVIRONMENT_ATTR, report.environment_snapshot())


def _step_dict(record: Any) -> dict[str, Any]:
    return {
        "number": record.number,
        "name": redact(record.name),
        "depth": record.depth,
        "status": record.status,
        "duration": record.duration,
        "note": redact(record.note) if record.note else None,
    }


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    # The artifacts are kept at teardown, after the failure was printed: list them once at the end.
    kept = config.stash.get(KEPT_ARTIFACTS_KEY, [])
    if kept:
        terminalreporter.write_sep("-", "Playwright artifacts (traces, screenshots)")
        for nodeid, text in kept:
            terminalreporter.write_line(nodeid)
            for line in text.splitlines():
                terminalreporter.write_line("  " + line)


def _steps_html(item: pytest.Item, log: StepLog, headline: str | None = None) -> str:
    info = item.stash.get(JOURNEY_KEY, None)
    parts = ['<div class="tl-test">']
    if info is not None:
        parts.append(
            f"<p>Journey <b>{report.esc(info.name)}</b> · {info.priority} · {report.money(info.mrr)} MRR · "
            f"{report.esc(', '.join(info.components))}</p>"
        )
    if headline:
        parts.append(f'<p style="color:#c00"><b>{report.esc(headline)}</b></p>')
    if log.records:
        parts.append("<table><tr><th>#</th><th>Step</th><th>Result</th><th>Duration</th></tr>")
        for r in log.records:
            style = {
                "failed": ' style="color:#c00;font-weight:bold"',
                "not applicable": ' style="color:#57606a;font-style:italic"',
            }.get(r.status, "")
            took = f"{r.duration:.2f} s" if r.duration is not None else "…"
            name = "&nbsp;&nbsp;" * r.depth + report.esc(r.name)
            error = f"<br><small>{report.esc(r.note)}</small>" if r.note else ""
            parts.append(
                f"<tr{style}><td>{r.number}</td><td>{name}{error}</td><td>{r.status}</td><td>{took}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</div>")
    return "".join(parts)


class _RedactedLongRepr:
    """A failure representation with secrets removed; keeps the crash line for summaries and JUnit."""

    def __init__(self, original: Any, text: str) -> None:
        self._text = text
        crash = getattr(original, "reprcrash", None)
        if crash is not None:
            self.reprcrash = ReprFileLocation(crash.path, crash.lineno, redact(crash.message))

    def toterminal(self, tw: Any) -> None:
        for line in self._text.splitlines():
            tw.line(line)

    def __str__(self) -> str:
        return self._text


def _redact_report(rep: pytest.TestReport) -> None:
    """Secrets never reach the terminal, JUnit XML or HTML through sections or tracebacks."""
    rep.sections = [(redact(title), redact(content)) for title, content in rep.sections]
    if rep.longrepr is not None and not isinstance(rep.longrepr, tuple):
        text = str(rep.longrepr)
        cleaned = redact(text)
        if cleaned != text:
            rep.longrepr = _RedactedLongRepr(rep.longrepr, cleaned)  # type: ignore[assignment]


# -- fixtures -------------------------------------------------------------------------------
class BrowserFixtures:
    """Throughline's overrides of pytest-playwright-asyncio's fixtures, plus its own."""

    @pytest.fixture(scope="session")
    @classmethod
    def browser_settings(cls, pytestconfig: pytest.Config) -> BrowserSettings:
        """The session's browser settings (playwright.config.py + environment + CLI)."""
        return pytestconfig.stash[SETTINGS_KEY]

    @pytest.fixture(scope="session")
    @classmethod
    def browser_type_launch_args(
        cls, browser_settings: BrowserSettings, browser_type: BrowserType, request: pytest.FixtureRequest
    ) -> dict[str, Any]:
        """Launch options of Chromium (headless, args, slow_mo, executable); override to change them."""
        if browser_settings.browser_ws:
            # A remote server uses its own browser unless one is configured explicitly.
            executable = browser_settings.executable
        else:
            executable, _source = resolve_chromium_executable(browser_settings, browser_type.executable_path)
        options = browser_settings.launch_options(executable)
        if hasattr(request, "param"):
            options.update(request.param)
        return options

    @pytest.fixture(scope="session")
    @classmethod
    def connect_options(cls, browser_settings: BrowserSettings) -> dict[str, Any] | None:
        """`browser_type.connect` options when a remote browser endpoint is configured."""
        if not browser_settings.browser_ws:
            return None
        return {"endpoint": browser_settings.browser_ws, "timeout": 30_000}

    @pytest.fixture(scope="session")
    @classmethod
    def launch_browser(
        cls,
        browser_type_launch_args: dict[str, Any],
        browser_type: BrowserType,
        connect_options: dict[str, Any] | None,
    ) -> Callable[..., Awaitable[Browser]]:
        """Launch, or connect to `playwright run-server` (launch options sent in protocol names)."""

        async def launch(**kwargs: Any) -> Browser:
            options = {**browser_type_launch_args, **kwargs}
            if not connect_options:
                return await browser_type.launch(**options)
            headers = {
                "x-playwright-launch-options": launch_options_header(options),
                **(connect_options.get("headers") or {}),
            }
            try:
                return await browser_type.connect(**{**connect_options, "headers": headers})
            except Error as exc:
                raise RuntimeError(
                    f"could not use the remote browser at {connect_options['endpoint']}: {exc}\n"
                    "Is `playwright run-server --port P --host H` running (same Playwright version)? "
                    "It only honours a client-side executable/args when started with --unsafe."
                ) from exc

        return launch

    @pytest.fixture(scope="session")
    @classmethod
    def browser_context_args(
        cls, browser_context_args: dict[str, Any], browser_settings: BrowserSettings
    ) -> dict[str, Any]:
        """`browser.new_context` arguments: viewport from the settings, then upstream's (video, device)."""
        return {**browser_settings.context_options(), **browser_context_args}

    @pytest.fixture
    def _artifacts_recorder(self, _artifacts_recorder: Any, browser_settings: BrowserSettings) -> Any:
        """Upstream's recorder of traces and screenshots, tracing each context per TRACE_SCREENSHOTS.

        Upstream always records the screencast filmstrip; the DOM snapshots, network, console and
        sources stay on either way (playwright.config.py says what the filmstrip costs).
        """
        if browser_settings.trace_screenshots:
            return _artifacts_recorder
        recorder = _artifacts_recorder

        async def start_tracing(context: BrowserContext) -> None:
            context.on("page", lambda page: recorder._all_pages.append(page))
            if recorder._request and recorder._capture_trace:
                await context.tracing.start(
                    title=_slugify(recorder._request.node.nodeid),
                    screenshots=False,
                    snapshots=True,
                    sources=True,
                )

        recorder.on_did_create_browser_context = start_tracing
        return recorder

    @pytest_asyncio.fixture(loop_scope="session")
    async def new_context(
        self,
        new_context: Callable[..., Awaitable[BrowserContext]],
        browser_settings: BrowserSettings,
        request: pytest.FixtureRequest,
    ) -> AsyncIterator[NewContext]:
        """Factory of extra users: `await new_context("bob")` -> BrowserUser (context, page, ws), traced."""
        evidence = request.node.stash.get(EVIDENCE_KEY, None)
        users: list[BrowserUser] = []

        async def make(label: str | None = None, **context_args: Any) -> BrowserUser:
            context = await new_context(**context_args)
            context.set_default_timeout(browser_settings.action_timeout_ms)
            context.set_default_navigation_timeout(browser_settings.navigation_timeout_ms)
            name = label or f"user{len(users) + 1}"
            recorder = WsRecorder(name)
            await recorder.attach_context(context)  # before any page exists, so before any navigation
            page = await context.new_page()
            user = BrowserUser(name, context, page, recorder)
            users.append(user)
            if evidence is not None:
                evidence.recorders.append(recorder)
            return user

        yield make
        # Upstream's new_context closes every context after this: trace, screenshots, video.

    @pytest_asyncio.fixture(loop_scope="session")
    async def browser_user(self, new_context: NewContext) -> BrowserUser:
        """The test's main user: a fresh context with one page and its WebSocket recorder."""
        return await new_context("page")

    @pytest.fixture
    def context(self, browser_user: BrowserUser) -> BrowserContext:
        """A fresh browser context per test (traced per settings, WebSockets recorded)."""
        return browser_user.context

    @pytest.fixture
    def page(self, browser_user: BrowserUser) -> Page:
        """The test's page, in `context`, not yet navigated."""
        return browser_user.page

    @pytest.fixture
    def ws_recorder(self, browser_user: BrowserUser) -> WsRecorder:
        """Every WebSocket frame of `context`'s pages."""
        return browser_user.ws

    @pytest.fixture
    def data_trail(self, request: pytest.FixtureRequest) -> report.DataTrail:
        """Probe results of this test: append((label, query, value)); shown in the report on failure."""
        evidence = request.node.stash.get(EVIDENCE_KEY, None)
        return evidence.data_trail if evidence is not None else report.DataTrail()
