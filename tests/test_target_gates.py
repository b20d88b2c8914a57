"""Capabilities gate tests, registered defects are strict xfails, and the report says so (real pytest runs)."""

from __future__ import annotations

import html
import os
import re
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
asyncio_default_test_loop_scope = session
addopts = -ra --strict-markers
"""
CONFTEST = 'pytest_plugins = ["harness.plugin", "harness.plugin_browser", "harness.plugin_target"]\n'
CAPABILITIES = ["password_signup", "email_verification", "streaming"]


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A throwaway project that runs Throughline's plugins, with no THROUGHLINE_* setting leaking in."""
    for name in [n for n in os.environ if n.startswith("THROUGHLINE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("COLUMNS", "400")  # short-summary lines are cut to the terminal's width
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    return pytester


def make_target(
    base: Path, *, capabilities: list[str] = CAPABILITIES, defects: str = "", name: str = "gatecheck"
) -> Path:
    """targets/<name>/ with external dummy URLs (nothing is started), the capabilities and defects given."""
    folder = base / "targets" / name
    folder.mkdir(parents=True)
    (folder / "target.toml").write_text(
        textwrap.dedent(
            f"""
            name = "{name}"
            version = "9.9.9"
            description = "A platform made up for one test"
            app = "targets.reference.app:ReferenceApp"
            capabilities = {capabilities!r}

            [external]
            frontend_url = "THROUGHLINE_FRONTEND_URL"
            """
        ).replace("'", '"')
    )
    if defects:
        (folder / "defects.toml").write_text(textwrap.dedent(defects))
    return folder


def summary_count(stdout: str, category: str) -> int:
    """The count of one category in pytest's final summary line (0 if absent)."""
    last = [line for line in stdout.splitlines() if re.search(r" in [\d.]+s", line)][-1]
    match = re.search(rf"(\d+) {category}\b", last)
    return int(match.group(1)) if match else 0


def junit_cases(path: Path) -> dict[str, ET.Element]:
    return {case.attrib["name"]: case for case in ET.parse(path).getroot().iter("testcase")}


GATED_TESTS = """
import pytest

from harness.journey import journey


def test_plain():
    pass


@journey(name="OAuth sign-in", priority="P0", mrr=150_000, components=["auth", "oauth"],
         needs=["password_signup", "oauth"])
def test_oauth(page):
    raise AssertionError("a not-applicable test ran (and set up its fixtures)")


@pytest.mark.needs("billing", "streaming", "usage_analytics")
def test_invoice():
    raise AssertionError("a not-applicable test ran")


@journey(name="Signup", priority="P0", mrr=100_000, components=["auth", "frontend"], needs=["password_signup"])
def test_signup():
    pass


def test_ordinary_skip():
    pytest.skip("nothing to do here")
"""


def test_should_report_a_test_needing_a_lacking_capability_as_not_applicable(
    project: pytest.Pytester,
) -> None:
    folder = make_target(project.path)
    project.makepyfile(test_gate=GATED_TESTS)

    result = project.runpytest_subprocess(
        "--target", str(folder), "--junitxml=junit.xml", "--html=report.html", "--self-contained-html"
    )

    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.OK, out
    assert "a not-applicable test ran" not in out
    oauth_reason = "not applicable to gatecheck: lacks oauth"
    invoice_reason = "not applicable to gatecheck: lacks billing, usage_analytics"
    result.stdout.fnmatch_lines(
        [
            "target: gatecheck 9.9.9 (3 capabilities; *)",
            "*- not applicable on gatecheck 9.9.9 -*",
            f"NOT APPLICABLE test_gate.py::test_oauth[[]chromium[]] - {oauth_reason}",
            f"NOT APPLICABLE test_gate.py::test_invoice - {invoice_reason}",
        ]
    )
    assert (summary_count(out, "passed"), summary_count(out, "skipped")) == (2, 1)
    assert summary_count(out, "not applicable") == 2, "not-applicable tests are counted apart from skips"

    cases = junit_cases(project.path / "junit.xml")
    for name, reason in (("test_oauth[chromium]", oauth_reason), ("test_invoice", invoice_reason)):
        skipped = cases[name].find("skipped")
        assert skipped is not None and skipped.attrib["message"] == reason
    ordinary = cases["test_ordinary_skip"].find("skipped")
    assert ordinary is not None and ordinary.attrib["message"] == "nothing to do here"

    page = html.unescape((project.path / "report.html").read_text())
    assert "Throughline: end-to-end journeys on gatecheck 9.9.9" in page
    assert "Release summary: gatecheck 9.9.9" in page
    assert "Not applicable on gatecheck" in page
    assert f"<td>test_gate.py::test_oauth[chromium]</td><td>{oauth_reason}</td>" in page
    assert f"<td>test_gate.py::test_invoice</td><td>{invoice_reason}</td>" in page
    assert "GREEN</b>: 2 journeys (2 tests) on gatecheck 9.9.9" in page
    assert "1 passed, 0 failed, 1 not applicable, 0 known defects, 0 skipped" in page  # journeys
    assert "Tests: 2 passed, 0 failed, 2 not applicable, 0 known defects, 1 skipped" in page
    assert "MRR protected $100,000; MRR at risk $0" in page


def test_should_refuse_an_unknown_capability_at_collection(project: pytest.Pytester) -> None:
    folder = make_target(project.path)
    project.makepyfile(
        test_typo="""
        import pytest
        from harness.journey import journey

        @pytest.mark.needs("telepathy")
        def test_marker():
            pass
        """,
        test_journey_typo="""
        import pytest

        @pytest.mark.journey(name="OAuth", priority="P0", mrr=1, components=["auth"], needs=["oauht"])
        def test_journey():
            pass
        """,
    )

    result = project.runpytest_subprocess("--target", str(folder))

    assert result.ret == pytest.ExitCode.INTERRUPTED
    for line in (
        "*test_marker*invalid @pytest.mark.needs: unknown capability 'telepathy'; known capabilities: agent_*",
        "*test_journey*invalid @pytest.mark.journey: unknown capability 'oauht'; known capabilities: agent_*",
    ):
        result.stdout.fnmatch_lines([line])
    assert "2 errors" in result.stdout.str()


def test_should_refuse_a_target_with_an_unknown_capability(project: pytest.Pytester) -> None:
    folder = make_target(project.path, capabilities=["oauth", "teleport"])
    project.makepyfile("def test_x():\n    pass\n")

    result = project.runpytest_subprocess("--target", str(folder))

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1, result.stderr.str()
    assert errors[0].startswith(
        f"ERROR: {folder / 'target.toml'}: field 'capabilities': unknown capability 'teleport'"
    )


def test_should_refuse_an_unknown_target_and_list_the_known_ones(project: pytest.Pytester) -> None:
    project.makepyfile("def test_x():\n    pass\n")

    result = project.runpytest_subprocess("--target", "nope")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: unknown target 'nope'; known targets: *reference*"])


DEFECTS = """
[[defect]]
id = "GC-1"
summary = "the refresh token is not rotated"
evidence = "POST /auth/refresh answers with the refresh token it was given"
test = "test_defect.py::test_refresh"
step = "Refresh the tokens"

[[defect]]
id = "GC-2"
summary = "every case answers 500"
evidence = "backend log: KeyError 'case'"
test = "test_defect.py::test_cases"

[[defect]]
id = "GC-3"
summary = "never collected here"
evidence = "-"
test = "test_defect.py::test_not_selected"
"""

DEFECT_TESTS = """
import os

import pytest

from harness.journey import journey
from harness.steps import step

MODE = os.environ.get("GATE_MODE", "defect")


@journey(name="Token refresh", priority="P0", mrr=20_000, components=["auth"])
def test_refresh():
    with step("Sign in"):
        assert MODE != "fail-early", "the sign-in page never loaded"
    assert MODE != "outside", "the dashboard shows no plan badge"
    with step("Refresh the tokens"):
        with step("Read the new refresh token"):
            assert MODE == "fixed", "the refresh token was not rotated"


@pytest.mark.parametrize("case", ["a", "b"])
def test_cases(case):
    raise AssertionError("500 Internal Server Error")


def test_not_selected():
    pass
"""


@pytest.mark.parametrize(
    ("mode", "exit_code", "expected"),
    [
        ("defect", pytest.ExitCode.OK, "XFAIL test_defect.py::test_refresh - known defect GC-1: *"),
        (
            "fixed",
            pytest.ExitCode.TESTS_FAILED,
            "FAILED test_defect.py::test_refresh - [[]XPASS(strict)[]] defect GC-1 seems fixed: "
            "remove it from */targets/gatecheck/defects.toml*",
        ),
        (
            "fail-early",
            pytest.ExitCode.TESTS_FAILED,
            "FAILED test_defect.py::test_refresh - failed at step 'Sign in', but known defect GC-1 is "
            "registered for step 'Refresh the tokens': AssertionError: the sign-in page never loaded*",
        ),
        (
            "outside",
            pytest.ExitCode.TESTS_FAILED,
            "FAILED test_defect.py::test_refresh - failed outside any step, but known defect GC-1 is "
            "registered for step 'Refresh the tokens'*",
        ),
    ],
)
def test_a_registered_defect_should_be_a_strict_xfail_of_its_step_only(
    project: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    exit_code: pytest.ExitCode,
    expected: str,
) -> None:
    folder = make_target(project.path, defects=DEFECTS)
    project.makepyfile(test_defect=DEFECT_TESTS)
    monkeypatch.setenv("GATE_MODE", mode)

    result = project.runpytest_subprocess(
        "--target",
        str(folder),
        "-k",
        "not test_not_selected",
        "--junitxml=junit.xml",
        "--html=report.html",
        "--self-contained-html",
    )

    out = result.stdout.str()
    assert result.ret == exit_code, out
    result.stdout.fnmatch_lines([expected])
    # A defect registered without params covers every parametrization.
    result.stdout.fnmatch_lines(["XFAIL test_defect.py::test_cases[[]a[]] - known defect GC-2: *"])
    assert summary_count(out, "xfailed") == (3 if mode == "defect" else 2)

    page = html.unescape((project.path / "report.html").read_text())
    assert "Defects found in gatecheck" in page
    assert (
        "<td>GC-3</td><td>never collected here</td><td>-</td><td>test_defect.py::test_not_selected</td>"
        in page
    )
    row = re.search(r"<td>GC-1</td>.*?</tr>", page)
    assert row is not None
    assert "<td>Refresh the tokens</td>" in row.group(0)
    assert re.search(r"<td>GC-3</td>.*?<td>not run</td></tr>", page)
    failure = junit_cases(project.path / "junit.xml")["test_refresh"]
    if mode == "defect":
        assert "still stands (xfailed)" in row.group(0)
        assert "GREEN" in page and "1 known defect," in page
        assert "MRR behind known defects $20,000" in page
    elif mode == "fixed":
        assert "fixed (XPASS): remove it from defects.toml" in row.group(0)
        assert "RELEASE BLOCKED" in page
        assert "seems fixed" in failure.find("failure").attrib["message"]  # type: ignore[union-attr]
    else:
        assert "not shown: the test failed elsewhere" in row.group(0)
        assert "RELEASE BLOCKED" in page
        message = failure.find("failure").attrib["message"]  # type: ignore[union-attr]
        assert "but known defect GC-1 is registered for step 'Refresh the tokens'" in message
        assert "Failed step" in out, "an ordinary failure keeps its evidence"


def test_should_refuse_a_defect_whose_test_file_does_not_exist(project: pytest.Pytester) -> None:
    folder = make_target(
        project.path,
        defects="""
        [[defect]]
        id = "GC-9"
        summary = "gone"
        evidence = "-"
        test = "journeys/test_gone.py::test_x"
        """,
    )
    project.makepyfile("def test_x():\n    pass\n")

    result = project.runpytest_subprocess("--target", str(folder))

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: {folder / 'defects.toml'}: defect GC-9: test 'journeys/test_gone.py::test_x' names *test_gone.py*"
        ]
    )


def test_a_test_may_find_out_while_running_that_it_is_not_applicable(project: pytest.Pytester) -> None:
    folder = make_target(project.path)
    project.makepyfile(
        test_runtime="""
        from harness.capabilities import NotApplicable
        from harness.stack import ServiceNotControllable
        from harness.steps import step


        def test_refresh(target):
            with step("Sign in"):
                pass
            with step("Refresh the tokens"):
                raise NotApplicable(target, "refresh_token")


        def test_free_reason(target):
            raise NotApplicable(target, "the deployment has no second region")


        def test_restart():
            raise ServiceNotControllable("service 'backend' cannot be stopped or restarted: it runs elsewhere")


        def test_optional_step(target):
            with step("Sign in"):
                pass
            if not target.has("refresh_token"):
                step.not_applicable("Refresh rotates the tokens", "lacks refresh_token")
            else:
                with step("Refresh rotates the tokens"):
                    raise AssertionError("ran")
        """
    )

    result = project.runpytest_subprocess(
        "--target", str(folder), "--junitxml=junit.xml", "--html=report.html", "--self-contained-html"
    )

    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.OK, out
    assert (summary_count(out, "not applicable"), summary_count(out, "passed")) == (3, 1)
    reasons = {
        "test_refresh": "not applicable to gatecheck: lacks refresh_token",
        "test_free_reason": "not applicable to gatecheck: the deployment has no second region",
        "test_restart": "not applicable to gatecheck: lacks service_control "
        "(service 'backend' cannot be stopped or restarted: it runs elsewhere)",
    }
    cases = junit_cases(project.path / "junit.xml")
    for name, reason in reasons.items():
        assert f"NOT APPLICABLE test_runtime.py::{name} - {reason}" in out
        skipped = cases[name].find("skipped")
        assert skipped is not None and skipped.attrib["message"] == reason
    page = html.unescape((project.path / "report.html").read_text())
    assert "Refresh rotates the tokens" in page and "not applicable: lacks refresh_token" in page
    assert f"<td>test_runtime.py::test_restart</td><td>{reasons['test_restart']}</td>" in page


def test_a_defect_may_leave_out_the_browser_parameter() -> None:
    """`test_x[expired]` in defects.toml matches pytest-playwright's `test_x[chromium-expired]`."""
    from harness.plugin_target import defect_applies
    from harness.target import Defect

    def defect(test: str) -> Defect:
        return Defect(id="D-1", summary="s", evidence="e", test=test)

    nodeid = "journeys/test_a.py::test_x[chromium-expired]"
    assert defect_applies(defect("journeys/test_a.py::test_x[expired]"), nodeid)
    assert defect_applies(defect("journeys/test_a.py::test_x[chromium-expired]"), nodeid)
    assert defect_applies(defect("journeys/test_a.py::test_x"), nodeid)
    assert not defect_applies(defect("journeys/test_a.py::test_x[tampered]"), nodeid)
    assert defect_applies(defect("journeys/test_a.py::test_y"), "journeys/test_a.py::test_y[chromium]")
