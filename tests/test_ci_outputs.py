"""CI outputs (harness/ci.py): job summary, gates, trend, webhook notifications, from real results.json files."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness import ci
from harness.cli import main
from harness.report import results_html
from harness.results import FAILED, NOT_APPLICABLE, RunResults
from harness.results import TestRecord as Record

ENV = {
    "components": {"postgres": "real", "redis": "real", "backend": "real", "auth": "real", "llm": "stand-in"}
}


def _journey(name: str, priority: str, mrr: int) -> dict[str, Any]:
    return {"name": name, "priority": priority, "mrr": mrr, "components": ["backend"]}


def make_run(
    reports: Path,
    run_id: str,
    *,
    fail: str | None = None,
    na_reason: str | None = None,
    env: dict[str, Any] | None = None,
    duration: float = 2.0,
    started: float | None = None,
) -> Path:
    """A run folder DIR/runs/<id>/ with a real results.json (signup P0, chat P1), DIR/latest pointing at it."""
    run = RunResults(target="reference", target_title="Reference platform", commit="abc123")
    run.started = started or time.time()
    run.finished = run.started + 10
    run.environment = dict(env if env is not None else ENV)
    for name, priority, mrr in (("signup", "P0", 5000), ("chat", "P1", 2000)):
        rec = Record(f"journeys/test_{name}.py::test_{name}", journey=_journey(name, priority, mrr))
        rec.duration = duration
        rec.steps = [{"number": "1", "name": "open the page", "depth": 0, "status": "passed"}]
        if name == fail:
            rec.outcome = FAILED
            rec.message = (
                "AssertionError: dashboard shows no plan badge access_token=sk-secretsecretsecret123"
            )
            rec.steps.append({"number": "2", "name": "see the plan badge", "depth": 0, "status": "failed"})
        if name == "chat" and na_reason:
            rec.outcome, rec.reason = NOT_APPLICABLE, na_reason
        run.tests[rec.nodeid] = rec
    folder = reports / "runs" / run_id
    path = run.write(folder / "results.json")
    (folder / "report.html").write_text("<html></html>")
    latest = reports / "latest"
    if latest.is_symlink():
        latest.unlink()
    latest.symlink_to(folder.relative_to(reports))
    return path


class Receiver:
    """A real Slack-style incoming webhook on 127.0.0.1 that keeps every JSON body it was sent."""

    def __init__(self, status: int = 200) -> None:
        self.messages: list[dict[str, Any]] = []
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.messages.append(json.loads(body))
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real local webhook receiver."""
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(autouse=True)
def _no_ambient_ci_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.delenv("THROUGHLINE_NOTIFY_URL", raising=False)


# -- job summary -------------------------------------------------------------------------------------
def test_should_write_the_summary_to_the_github_step_summary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_run(tmp_path, "r1", fail="signup")
    summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert main(["report", "summary", str(tmp_path / "latest")]) == 0
    text = summary.read_text()
    assert "RELEASE BLOCKED" in text, "a failed P0 journey must block the release in the summary"
    assert "| P0 | 1 | 0 | 1 |" in text, "the P0 row should count one failed journey"
    assert "| signup | P0 | 2 see the plan badge | $5,000 |" in text, "each failure names its step and MRR"
    assert "MRR protected **$2,000**" in text and "MRR at risk **$5,000**" in text
    assert "report.html" in text and "results.json" in text, "the summary links the artifacts"
    assert "sk-secretsecretsecret123" not in text, "the summary must be redacted"
    assert "job summary written to" in capsys.readouterr().out


def test_should_print_the_summary_to_stdout_without_github(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_run(tmp_path, "r1")
    assert main(["report", "summary", str(tmp_path / "latest" / "results.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## 🟢 Throughline: GREEN on Reference platform")
    assert "MRR protected **$7,000**" in out


# -- gates ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("gate", "run_kwargs", "passes", "why"),
    [
        ("p0", {}, True, "all 1 P0 journeys passed"),
        ("p0", {"fail": "signup"}, False, "P0 journeys not passed: signup"),
        ("supported", {"na_reason": "not applicable to reference: lacks oauth"}, False, "declares it"),
        ("supported", {"na_reason": "not applicable to reference: needs a second browser"}, True, "no test"),
        ("real>=80", {}, True, "80% real (4/5)"),
        ("real>=90", {}, False, "80% real (4/5), needs at least 90%"),
        ("coverage>=70", {}, False, "no platform coverage was measured: run with --platform-coverage"),
    ],
)
def test_should_evaluate_each_gate(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    gate: str,
    run_kwargs: dict[str, Any],
    passes: bool,
    why: str,
) -> None:
    make_run(tmp_path, "r1", **run_kwargs)
    status = main(["report", "summary", str(tmp_path / "latest"), "--gate", gate])
    out = capsys.readouterr().out
    assert status == (0 if passes else 1), f"gate {gate} should {'pass' if passes else 'fail'}: {out}"
    assert f"gate {gate}: {'pass' if passes else 'FAILED'}: " in out and why in out
    assert f"| `{gate}` | {'pass' if passes else '**FAIL**'} |" in out, "the summary shows the gate too"


def test_should_show_the_gates_at_the_top_of_the_html_report_once(tmp_path: Path) -> None:
    path = make_run(tmp_path, "r1", fail="signup")
    (path.parent / "report.html").write_text("<html><body class='x'><h1>Release summary</h1></body></html>")
    assert main(["report", "summary", str(tmp_path / "latest"), "--gate", "p0", "--gate", "real>=50"]) == 1
    assert main(["report", "summary", str(tmp_path / "latest"), "--gate", "p0", "--gate", "real>=50"]) == 1
    page = (path.parent / "report.html").read_text()
    assert page.count("id='throughline-gates'") == 1, "a second evaluation must replace the first"
    assert page.index("RELEASE GATES: 1 of 2 FAILED") < page.index("Release summary")
    assert "<code>p0</code>" in page and "signup" in page and "<code>real&gt;=50</code>" in page


def test_should_pass_and_fail_the_coverage_gate_on_measured_coverage(tmp_path: Path) -> None:
    make_run(tmp_path, "r1")
    results = RunResults.load(tmp_path / "latest" / "results.json")
    results.platform_coverage = {"services": {}, "total": {"line_percent": 75.0, "branch_percent": None}}  # type: ignore[attr-defined]
    assert ci.evaluate_gate(ci.Gate("coverage", 70), results).passed
    verdict = ci.evaluate_gate(ci.Gate("coverage", 80), results)
    assert not verdict.passed and "75.0%" in verdict.why


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gate", "p0>>3"], "malformed gate rule 'p0>>3'"),
        (["--gate", "speed"], "unknown gate 'speed'"),
        (["--gate", "coverage>=120"], "threshold 120 is out of 0 to 100"),
        (["--previous", "/nonexistent/run"], "no such results file"),
        (["--notify", "ftp://example.org/hook"], "is not an http(s) URL"),
    ],
)
def test_should_refuse_bad_input_with_one_line_and_exit_2_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    reports = tmp_path / "reports"
    # `run` validates before pytest starts: nothing is written to the reports dir.
    assert main(["run", "--reports", str(reports), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not reports.exists(), "bad input must write nothing"
    make_run(tmp_path, "r1")
    assert main(["report", "summary", str(tmp_path / "latest"), *argv]) == 2
    assert message in capsys.readouterr().err


# -- trend -----------------------------------------------------------------------------------------------
def test_should_show_what_newly_failed_what_was_fixed_and_durations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = make_run(tmp_path, "r1", fail="signup", duration=2.0, started=time.time() - 100)
    make_run(tmp_path, "r2", fail="chat", duration=3.5)
    assert main(["report", "summary", str(tmp_path / "latest"), "--previous", "last"]) == 0
    out = capsys.readouterr().out
    assert "### Trend (previous run: RELEASE BLOCKED)" in out
    assert "- Newly failed: chat" in out and "- Fixed: signup" in out
    assert "| signup | 3.5 s | +1.5 s |" in out
    trend = ci.trend_of(RunResults.load(tmp_path / "latest" / "results.json"), RunResults.load(before))
    assert trend.newly_failed == ["chat"] and trend.fixed == ["signup"]


# -- notifications ----------------------------------------------------------------------------------------
def test_should_notify_once_per_red_run_once_on_recovery_and_never_while_green(
    tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    base = time.time() - 1000

    def run(run_id: str, offset: int, **kwargs: Any) -> None:
        make_run(tmp_path, run_id, started=base + offset, **kwargs)
        assert (
            main(
                [
                    "report",
                    "summary",
                    str(tmp_path / "latest"),
                    "--previous",
                    "last",
                    "--notify",
                    receiver.url,
                ]
            )
            == 0
        )

    run("g1", 0)
    assert receiver.messages == [], "a green run with no previous run sends nothing"
    run("g2", 10)
    assert receiver.messages == [], "green after green sends nothing"
    run("red1", 20, fail="signup")
    assert len(receiver.messages) == 1, "a red run sends exactly one message"
    first = receiver.messages[0]
    assert first["throughline"]["kind"] == "failure" and first["throughline"]["verdict"] == "RELEASE BLOCKED"
    assert first["throughline"]["failures"] == [
        {"journey": "signup", "priority": "P0", "step": "2 see the plan badge", "mrr": 5000}
    ]
    assert "report.html" in first["throughline"]["report"] and "signup" in first["text"]
    run("red2", 30, fail="chat")
    assert len(receiver.messages) == 2, "every red run sends one message"
    run("g3", 40)
    assert len(receiver.messages) == 3 and receiver.messages[2]["throughline"]["kind"] == "recovery"
    run("g4", 50)
    assert len(receiver.messages) == 3, "green after the recovery sends nothing"
    assert "failure notification sent" in capsys.readouterr().out


def test_should_redact_the_webhook_message(tmp_path: Path, receiver: Receiver) -> None:
    make_run(tmp_path, "r1", fail="signup")
    results = RunResults.load(tmp_path / "latest" / "results.json")
    payload = ci.notify_payload(
        results, "failure", "reports/latest/report.html?access_token=sk-secretsecretsecret123"
    )
    assert ci.post_notification(receiver.url, payload) is None
    assert "sk-secretsecretsecret123" not in json.dumps(receiver.messages)


def test_should_say_a_dead_webhook_failed_without_failing_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = Receiver(status=503)
    make_run(tmp_path, "r1", fail="signup")
    started = time.monotonic()
    status = main(["report", "summary", str(tmp_path / "latest"), "--notify", dead.url])
    dead.close()
    out = capsys.readouterr().out
    assert status == 0, "a dead webhook must not fail the run"
    assert "failure notification NOT sent, the webhook failed: HTTP 503 after 3 attempt(s)" in out
    assert len(dead.messages) == 3, "it retries, with back-off"
    assert time.monotonic() - started < 10, "a dead webhook must not hang the run"


def test_should_give_up_on_an_unreachable_webhook(tmp_path: Path) -> None:
    closed = Receiver()
    url = closed.url
    closed.close()  # nothing listens there now
    error = ci.post_notification(url, {"text": "x"}, timeout=1, backoff=0.05)
    assert error is not None and "ConnectError" in error and "3 attempt(s)" in error


# -- the failure screenshot in the self-contained report -----------------------------------------------------
def test_should_embed_the_failure_screenshot_in_the_merged_report(tmp_path: Path) -> None:
    png = tmp_path / "shot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake-but-real-bytes")
    make_run(tmp_path, "r1", fail="signup")
    results = RunResults.load(tmp_path / "latest" / "results.json")
    results.tests["journeys/test_signup.py::test_signup"].artifacts = [["playwright_screenshot", str(png)]]
    document = results_html(results, None)
    assert "src='data:image/png;base64," + base64.b64encode(png.read_bytes()).decode() in document, (
        "the screenshot is embedded, not linked"
    )
