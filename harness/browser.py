"""Browser settings: one frozen object from playwright.config.py, the environment and the CLI.

`load_settings(config)` is called once per session by the browser plugin; everything that
launches or configures Chromium reads the result (`BrowserSettings`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE_NAME = "playwright.config.py"

TRACING_MODES = ("off", "on", "retain-on-failure")
VIDEO_MODES = ("off", "on", "retain-on-failure")
SCREENSHOT_MODES = ("off", "on", "only-on-failure")

_BUILTIN_DEFAULTS: dict[str, Any] = {
    "BROWSER": "chromium",
    "HEADED": False,
    "SLOW_MO_MS": 0,
    "TRACING": "retain-on-failure",
    "TRACE_SCREENSHOTS": False,
    "VIDEO": "off",
    "SCREENSHOT": "only-on-failure",
    "ACTION_TIMEOUT_MS": 10_000,
    "NAVIGATION_TIMEOUT_MS": 20_000,
    "EXPECT_TIMEOUT_MS": 5_000,
    "VIEWPORT": (1280, 800),
    "CHROMIUM_EXECUTABLE": None,
    "CHROMIUM_CANDIDATES": ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"),
    "HEADLESS_SHELL_CANDIDATES": ("/usr/bin/chromium-headless-shell",),
    "HEADLESS_ARGS": (
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ),
    "BROWSER_WS_ENDPOINT": None,
    "ARTIFACTS_DIR": "reports/artifacts",
}


NO_DISPLAY = (
    "no display was found for a headed browser (DISPLAY and WAYLAND_DISPLAY are unset): run it under "
    "xvfb-run (the package xvfb), e.g. `xvfb-run -a make e2e HEADED=1`, or run headless and open the "
    "trace instead (`playwright show-trace reports/artifacts/<test>/trace.zip`)"
)


def headed_display_error(headed: bool, browser_ws: str | None = None) -> str | None:
    """The one line to print when a headed browser cannot open a window here; None when it can."""
    if not headed or browser_ws or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return NO_DISPLAY


class BrowserSettingsError(ValueError):
    """A browser setting has a value Throughline cannot use."""


class BrowserNotFoundError(RuntimeError):
    """No Chromium executable could be found; the message lists what was searched."""


@dataclass(frozen=True)
class BrowserSettings:
    """Everything about how the browser runs and what it leaves behind."""

    browser: str = "chromium"
    headed: bool = False
    slow_mo_ms: int = 0
    tracing: str = "retain-on-failure"
    trace_screenshots: bool = False  # the trace's screencast filmstrip (DOM snapshots are always in it)
    video: str = "off"
    screenshot: str = "only-on-failure"
    action_timeout_ms: int = 10_000
    navigation_timeout_ms: int = 20_000
    expect_timeout_ms: int = 5_000
    viewport: tuple[int, int] = (1280, 800)
    executable: str | None = None  # explicitly configured; see resolve_chromium_executable
    executable_source: str | None = None  # which setting gave `executable`
    chromium_candidates: tuple[str, ...] = ()
    headless_shell_candidates: tuple[str, ...] = ()  # preferred over chromium_candidates when headless
    headless_args: tuple[str, ...] = ()
    browser_ws: str | None = None
    artifacts_dir: Path = Path("reports/artifacts")
    config_file: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict)  # setting -> "cli" | "env" | "config"

    @property
    def launch_args(self) -> tuple[str, ...]:
        """Chromium command-line arguments for this run."""
        args: list[str] = []
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run its sandbox as root
        if not self.headed:
            args.extend(self.headless_args)
        return tuple(args)

    def launch_options(self, executable: str | None) -> dict[str, Any]:
        """Keyword arguments of `BrowserType.launch` (Python names)."""
        options: dict[str, Any] = {"headless": not self.headed, "args": list(self.launch_args)}
        if self.slow_mo_ms:
            options["slow_mo"] = self.slow_mo_ms
        if executable:
            options["executable_path"] = executable
        return options

    def context_options(self) -> dict[str, Any]:
        """Keyword arguments of `Browser.new_context` that come from the settings."""
        return {"viewport": {"width": self.viewport[0], "height": self.viewport[1]}}


def find_config_file(rootpath: Path | None = None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """playwright.config.py: THROUGHLINE_PLAYWRIGHT_CONFIG, else the rootdir's, else the repo's."""
    explicit = environ.get("THROUGHLINE_PLAYWRIGHT_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise BrowserSettingsError(f"THROUGHLINE_PLAYWRIGHT_CONFIG={explicit} does not exist")
        return path
    for directory in (rootpath, REPO_ROOT):
        if directory is not None and (directory / CONFIG_FILE_NAME).is_file():
            return directory / CONFIG_FILE_NAME
    return None


def _load_config_module(path: Path | None) -> ModuleType | None:
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location("throughline_playwright_config", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _explicit_cli(config: pytest.Config | None, option: str) -> bool:
    """Whether `option` was given on the command line (or PYTEST_ADDOPTS / addopts)."""
    if config is None:
        return False
    args: list[str] = [str(a) for a in config.invocation_params.args]
    args += shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))
    try:
        args += [str(a) for a in config.getini("addopts")]
    except (ValueError, KeyError):
        pass
    return any(a == option or a.startswith(option + "=") for a in args)


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise BrowserSettingsError(f"{name}={value!r}: use 1/0, true/false, yes/no")


def _parse_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BrowserSettingsError(f"{name}={value!r} is not a whole number") from None
    if number < 0:
        raise BrowserSettingsError(f"{name}={value!r} must not be negative")
    return number


def _parse_viewport(name: str, value: Any) -> tuple[int, int]:
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
    else:
        parts = list(value)
    if len(parts) != 2:
        raise BrowserSettingsError(f"{name}={value!r}: use WIDTHxHEIGHT, e.g. 1280x800")
    return (_parse_int(name, parts[0]), _parse_int(name, parts[1]))


def _check_mode(name: str, value: str, modes: Sequence[str]) -> str:
    if value not in modes:
        raise BrowserSettingsError(f"{name}={value!r}: use one of {', '.join(modes)}")
    return value


def load_settings(
    config: pytest.Config | None = None,
    environ: Mapping[str, str] = os.environ,
    config_file: Path | None = None,
) -> BrowserSettings:
    """Build the session's BrowserSettings: CLI (explicit) > environment > playwright.config.py."""
    rootpath = config.rootpath if config is not None else Path.cwd()
    path = config_file or find_config_file(rootpath, environ)
    module = _load_config_module(path)
    sources: dict[str, str] = {}

    def default(key: str) -> Any:
        return getattr(module, key, _BUILTIN_DEFAULTS[key]) if module else _BUILTIN_DEFAULTS[key]

    def pick(key: str, env: str | None, cli: str | None, dest: str | None, parse: Any) -> Any:
        if cli and dest and config is not None and _explicit_cli(config, cli):
            sources[key] = "cli"
            return parse(cli, config.getoption(dest))
        if env and env in environ:
            sources[key] = "env"
            return parse(env, environ[env])
        sources[key] = "config" if module is not None and hasattr(module, key) else "builtin"
        return parse(key, default(key))

    def as_bool(name: str, value: Any) -> bool:
        return _parse_bool(name, value) if isinstance(value, str) else bool(value)

    def as_str(name: str, value: Any) -> str:
        return str(value)

    def as_opt_str(name: str, value: Any) -> str | None:
        return str(value) if value not in (None, "") else None

    headed = pick("HEADED", "THROUGHLINE_HEADED", "--headed", "headed", as_bool)
    slow_mo = pick("SLOW_MO_MS", "THROUGHLINE_SLOWMO", "--slowmo", "slowmo", _parse_int)
    tracing = _check_mode(
        "tracing", pick("TRACING", "THROUGHLINE_TRACING", "--tracing", "tracing", as_str), TRACING_MODES
    )
    trace_screenshots = pick("TRACE_SCREENSHOTS", "THROUGHLINE_TRACE_SCREENSHOTS", None, None, as_bool)
    video = _check_mode("video", pick("VIDEO", "THROUGHLINE_VIDEO", "--video", "video", as_str), VIDEO_MODES)
    screenshot = _check_mode(
        "screenshot",
        pick("SCREENSHOT", "THROUGHLINE_SCREENSHOT", "--screenshot", "screenshot", as_str),
        SCREENSHOT_MODES,
    )
    executable = pick(
        "CHROMIUM_EXECUTABLE",
        "THROUGHLINE_CHROMIUM",
        "--browser-executable",
        "browser_executable",
        as_opt_str,
    )
    executable_source = {
        "cli": "--browser-executable",
        "env": "THROUGHLINE_CHROMIUM",
        "config": f"CHROMIUM_EXECUTABLE in {path}",
    }.get(sources["CHROMIUM_EXECUTABLE"])
    browser_ws = pick(
        "BROWSER_WS_ENDPOINT", "THROUGHLINE_BROWSER_WS", "--browser-ws", "browser_ws", as_opt_str
    )
    artifacts = pick("ARTIFACTS_DIR", "THROUGHLINE_ARTIFACTS_DIR", "--output", "output", as_str)
    artifacts_dir = Path(artifacts)
    if not artifacts_dir.is_absolute():
        artifacts_dir = rootpath / artifacts_dir

    browser = str(default("BROWSER"))
    if config is not None and _explicit_cli(config, "--browser"):
        browsers = config.getoption("browser") or [browser]
        browser = browsers[0]
    if browser != "chromium":
        raise BrowserSettingsError(f"browser {browser!r}: Throughline's journeys run on chromium only")

    return BrowserSettings(
        browser=browser,
        headed=headed,
        slow_mo_ms=slow_mo,
        tracing=tracing,
        trace_screenshots=trace_screenshots,
        video=video,
        screenshot=screenshot,
        action_timeout_ms=pick("ACTION_TIMEOUT_MS", "THROUGHLINE_ACTION_TIMEOUT_MS", None, None, _parse_int),
        navigation_timeout_ms=pick(
            "NAVIGATION_TIMEOUT_MS", "THROUGHLINE_NAVIGATION_TIMEOUT_MS", None, None, _parse_int
        ),
        expect_timeout_ms=pick("EXPECT_TIMEOUT_MS", "THROUGHLINE_EXPECT_TIMEOUT_MS", None, None, _parse_int),
        viewport=pick("VIEWPORT", "THROUGHLINE_VIEWPORT", None, None, _parse_viewport),
        executable=executable,
        executable_source=executable_source,
        chromium_candidates=tuple(default("CHROMIUM_CANDIDATES")),
        headless_shell_candidates=tuple(default("HEADLESS_SHELL_CANDIDATES")),
        headless_args=tuple(default("HEADLESS_ARGS")),
        browser_ws=browser_ws,
        artifacts_dir=artifacts_dir,
        config_file=str(path) if path else None,
        sources=sources,
    )


def resolve_chromium_executable(settings: BrowserSettings, bundled: str | None) -> tuple[str | None, str]:
    """(path, where it came from) of the Chromium to launch.

    Order: the explicit setting (CLI / env / config, which must exist), Playwright's bundled
    build if it is on disk (path None: Playwright finds it itself), then the system candidates.
    """
    __tracebackhide__ = True
    searched: list[str] = []
    if settings.executable:
        if Path(settings.executable).is_file() and os.access(settings.executable, os.X_OK):
            return settings.executable, settings.executable_source or "explicit setting"
        raise BrowserNotFoundError(
            f"Chromium executable {settings.executable!r} (from {settings.executable_source}) does not exist "
            "or is not executable.\nFix: point it at a Chromium binary (e.g. /usr/bin/chromium), or unset it "
            "to let Throughline search Playwright's bundled build and the usual system paths."
        )
    searched.append("--browser-executable / THROUGHLINE_CHROMIUM / CHROMIUM_EXECUTABLE: not set")
    if bundled:
        if Path(bundled).is_file():
            return None, f"Playwright's bundled build ({bundled})"
        searched.append(f"Playwright's bundled build: {bundled} (missing)")
    # Headless, the old headless shell first, as Playwright does with its own builds: the same
    # Blink and V8 without the full browser's UI, so every journey costs less CPU.
    shells = () if settings.headed else settings.headless_shell_candidates
    for candidate, kind in [(c, "headless shell") for c in shells] + [
        (c, "Chromium") for c in settings.chromium_candidates
    ]:
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate, f"system {kind} ({candidate})"
        searched.append(f"{candidate} (missing)")
    raise BrowserNotFoundError(
        "No Chromium executable found. Searched:\n  - "
        + "\n  - ".join(searched)
        + "\nFix one of: `apt-get install chromium`; set THROUGHLINE_CHROMIUM=/path/to/chrome or pass "
        "--browser-executable=/path/to/chrome; `playwright install chromium` (needs internet); or use a "
        "remote browser with THROUGHLINE_BROWSER_WS / --browser-ws."
    )


_PROTOCOL_NAMES = {
    "executable_path": "executablePath",
    "slow_mo": "slowMo",
    "ignore_default_args": "ignoreDefaultArgs",
    "chromium_sandbox": "chromiumSandbox",
    "downloads_path": "downloadsPath",
    "traces_dir": "tracesDir",
    "firefox_user_prefs": "firefoxUserPrefs",
}


def launch_options_header(launch_options: Mapping[str, Any]) -> str:
    """The `x-playwright-launch-options` header: protocol (camelCase) names, as run-server expects.

    `playwright run-server` honours executablePath and args only when started with --unsafe.
    """
    converted: dict[str, Any] = {}
    for key, value in launch_options.items():
        if key == "ignore_default_args" and value is True:
            converted["ignoreAllDefaultArgs"] = True
            continue
        converted[_PROTOCOL_NAMES.get(key, key)] = str(value) if isinstance(value, Path) else value
    return json.dumps(converted)
