"""Throughline's browser and artifact defaults.

This file is read by harness/browser.py (it is not importable by name: the dot in
"playwright.config" is deliberate, to mirror Playwright Test's playwright.config.ts).
Every value can be overridden per run; precedence is

    command-line option  >  environment variable  >  this file

| setting              | CLI option             | environment variable           |
|----------------------|------------------------|--------------------------------|
| HEADED               | --headed               | THROUGHLINE_HEADED=1           |
| SLOW_MO_MS           | --slowmo MS            | THROUGHLINE_SLOWMO=MS          |
| TRACING              | --tracing MODE         | THROUGHLINE_TRACING=MODE       |
| TRACE_SCREENSHOTS    |                        | THROUGHLINE_TRACE_SCREENSHOTS=1 |
| VIDEO                | --video MODE           | THROUGHLINE_VIDEO=MODE         |
| SCREENSHOT           | --screenshot MODE      | THROUGHLINE_SCREENSHOT=MODE    |
| ACTION_TIMEOUT_MS    |                        | THROUGHLINE_ACTION_TIMEOUT_MS  |
| NAVIGATION_TIMEOUT_MS|                        | THROUGHLINE_NAVIGATION_TIMEOUT_MS |
| EXPECT_TIMEOUT_MS    |                        | THROUGHLINE_EXPECT_TIMEOUT_MS  |
| VIEWPORT             |                        | THROUGHLINE_VIEWPORT=1280x800  |
| CHROMIUM_EXECUTABLE  | --browser-executable P | THROUGHLINE_CHROMIUM=P         |
| BROWSER_WS_ENDPOINT  | --browser-ws URL       | THROUGHLINE_BROWSER_WS=URL     |
| ARTIFACTS_DIR        | --output DIR           | THROUGHLINE_ARTIFACTS_DIR=DIR  |

--headed, --slowmo, --tracing, --video, --screenshot and --output are pytest-playwright-asyncio's
own options; Throughline only changes their defaults to the values below.
"""

# Browser engine. Only Chromium is supported by the journeys (Debian ships it).
BROWSER = "chromium"

# Show the browser window (needs a display).
HEADED = False

# Slow every Playwright action down by this many milliseconds (demos, debugging).
SLOW_MO_MS = 0

# Playwright trace per browser context: "off", "on" or "retain-on-failure".
# Open a kept trace with `playwright show-trace <path>`.
TRACING = "retain-on-failure"

# The trace's screencast filmstrip. Without it a trace still has the DOM snapshot before and
# after every action (the trace viewer renders them), the network, the console and the sources,
# and the failure screenshot is taken anyway (SCREENSHOT). The screencast makes Chromium paint
# and encode frames all along: on a 2-core machine it costs a tenth of the serial wall time
# and a quarter of the wall time of two workers (docs/parallel.md).
TRACE_SCREENSHOTS = False

# Video per page: "off", "on" or "retain-on-failure".
VIDEO = "off"

# Screenshot of every open page when the test ends: "off", "on" or "only-on-failure".
SCREENSHOT = "only-on-failure"

# Default timeout of clicks, fills, waits (context.set_default_timeout).
ACTION_TIMEOUT_MS = 10_000

# Default timeout of goto / reload / wait_for_url.
NAVIGATION_TIMEOUT_MS = 20_000

# Default timeout of `expect(locator).to_...` assertions.
EXPECT_TIMEOUT_MS = 5_000

# Browser viewport (width, height).
VIEWPORT = (1280, 800)

# Chromium to launch. None: Playwright's bundled build if installed, else (headless) the first
# of HEADLESS_SHELL_CANDIDATES, else the first of CHROMIUM_CANDIDATES that exists.
CHROMIUM_EXECUTABLE = None

CHROMIUM_CANDIDATES = (
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
)

# Headless runs prefer the first of these that exists over CHROMIUM_CANDIDATES: Chromium's old
# headless shell (Debian package chromium-headless-shell), what Playwright's own headless runs use.
# The same engine without the browser's UI: the journeys take about a fifth less time and CPU.
# () always launches the full Chromium.
HEADLESS_SHELL_CANDIDATES = ("/usr/bin/chromium-headless-shell",)

# Extra Chromium arguments in headless runs (--no-sandbox is added when running as root).
HEADLESS_ARGS = (
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)

# Connect to a running `playwright run-server` instead of launching a browser, e.g.
# "ws://127.0.0.1:3000/". Start the server with `--unsafe` if it must use a Chromium
# executable passed by the client (CHROMIUM_EXECUTABLE / THROUGHLINE_CHROMIUM).
BROWSER_WS_ENDPOINT = None

# Where traces, screenshots and videos of each test go (relative to the pytest rootdir).
# Cleared at the start of every run (pytest-playwright-asyncio's behaviour for --output).
ARTIFACTS_DIR = "reports/artifacts"
