"""Defect drills: drills.toml is validated line by line, a drill applies or says why not, the
journeys' `drills=[...]` are checked at collection, and prove's verdicts and matrix read right."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from harness.detection import (
    CAUGHT,
    ERROR,
    SURVIVED,
    TIMED_OUT,
    TOO_COARSE,
    DrillResult,
    ProveRun,
    render_matrix,
)
from harness.drills import (
    PROJECT,
    SOURCE_ROOT_ENV,
    DrillError,
    drill_owners,
    load_drills,
    patched_text,
    scratch_copy,
)
from harness.journey import JourneyMarkerError, journey, validate_journey
from harness.prove import classify
from harness.report import (
    DETECTION_END,
    DETECTION_START,
    detection_html,
    detection_placeholder,
    replace_detection,
)
from harness.stack import Stack
from harness.target import load_target

pytest_plugins = ["pytester"]

ONE_DRILL = '''
source = "stack"
controls = ["journeys/test_a.py::test_control"]

[[drill]]
name = "profile-loses-name"
breaks = "the dashboard greets a new person without a name"
file = "stack/backend/app.py"
find = """
        user_id, email, full_name = announced.user_id, announced.email, announced.full_name
"""
replace = """
        user_id, email, full_name = announced.user_id, announced.email, ""
"""
'''


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "drills.toml"
    path.write_text(textwrap.dedent(text))
    return path


# -- drills.toml ----------------------------------------------------------------------------
def test_should_load_a_valid_drills_file(tmp_path: Path) -> None:
    drills = load_drills(write(tmp_path, ONE_DRILL))
    assert drills.names() == ("profile-loses-name",)
    assert drills.controls == ("journeys/test_a.py::test_control",)
    assert drills.original_root() == PROJECT and drills.top == "stack"
    drill = drills.get("profile-loses-name")
    assert drill.find.startswith("        user_id, email, full_name") and drill.replace.endswith('""\n')


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("source = [", "not valid TOML"),
        ('source = "stack"\npackage = "x"\n[[drill]]\nname = "a"', "exactly one of them"),
        ("controls = []\n", "exactly one of them"),
        ('source = "nowhere"\n', "is not a folder"),
        ('source = "stack"\ncolour = 1\n', "unknown field(s) ['colour']"),
        ('source = "stack"\n', "declares no drill"),
        (
            'source = "stack"\ncontrols = ["test_x"]\n[[drill]]\n',
            "field 'controls' must be a list of test ids",
        ),
        ('source = "stack"\n[[drill]]\nname = "a"\n', "drill 'a': field 'breaks' must be a non-empty string"),
        (
            'source = "stack"\n[[drill]]\nname = "Bad Name"\nbreaks = "b"\nfile = "stack/x.py"\nfind = "f"\nreplace = "r"\n',
            "a drill name is lower-case letters, digits and '-'",
        ),
        (
            'source = "stack"\n[[drill]]\nname = "a"\nbreaks = "b"\nfile = "harness/x.py"\nfind = "f"\nreplace = "r"\n',
            "field 'file' must be a path inside 'stack/'",
        ),
        (
            'source = "stack"\n[[drill]]\nname = "a"\nbreaks = "b"\nfile = "stack/../x.py"\nfind = "f"\nreplace = "r"\n',
            "field 'file' must be a path inside 'stack/'",
        ),
        (
            'source = "stack"\n[[drill]]\nname = "a"\nbreaks = "b"\nfile = "stack/x.py"\nfind = "f"\nreplace = "f"\n',
            "the drill changes nothing",
        ),
        (
            'source = "stack"\n[[drill]]\nname = "a"\nbreaks = "one\\ntwo"\nfile = "stack/x.py"\nfind = "f"\nreplace = "r"\n',
            "is one line saying what breaks",
        ),
        (
            'source = "stack"\n[[drill]]\nname = "a"\nbreaks = "b"\nfile = "stack/x.py"\nfind = "f"\nreplace = "r"\nwhy = 1\n',
            "unknown field(s) ['why']",
        ),
        (
            'source = "stack"\n'
            + '[[drill]]\nname = "a"\nbreaks = "b"\nfile = "stack/x.py"\nfind = "f"\nreplace = "r"\n' * 2,
            "drill 'a': declared twice",
        ),
    ],
)
def test_should_refuse_a_malformed_drills_file_in_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(DrillError) as caught:
        load_drills(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and expected in message, message
    assert "\n" not in message


def test_should_refuse_a_drill_name_declared_by_two_targets(tmp_path: Path) -> None:
    for folder, name in (("one", "alpha"), ("two", "beta"), ("alpha-copy", "alpha")):
        (tmp_path / folder).mkdir()
        write(tmp_path / folder, ONE_DRILL)
        (tmp_path / folder / "target.toml").write_text(f'name = "{name}"\n')
    assert drill_owners([tmp_path / "one", tmp_path / "alpha-copy"]) == {"profile-loses-name": "alpha"}
    with pytest.raises(DrillError, match="also a drill of target 'alpha'"):
        drill_owners([tmp_path / "one", tmp_path / "two"])


# -- applying -------------------------------------------------------------------------------
def test_a_drill_should_patch_only_the_scratch_copy_and_the_copy_should_go_away(tmp_path: Path) -> None:
    drills = load_drills(write(tmp_path, ONE_DRILL))
    drill = drills.drills[0]
    original = (PROJECT / drill.file).read_text()
    with scratch_copy(drills, drill) as root:
        patched = (root / drill.file).read_text()
        assert drill.replace in patched and drill.find not in patched
        assert (root / "stack" / "backend" / "chat.py").is_file(), "the copy is not the whole platform"
        assert not list(root.rglob("__pycache__")), "the copy carries compiled files of the original"
    assert not root.exists(), "the scratch copy was not thrown away"
    assert (PROJECT / drill.file).read_text() == original, "the drill touched the original code"


@pytest.mark.parametrize(
    ("find", "replace", "expected"),
    [
        ("this text is nowhere\n", "x\n", "the text to find no longer occurs"),
        ("import ", "imp0rt ", "the text to find occurs"),
        ("def create_app() -> FastAPI:\n", "def create_app( -> FastAPI:\n", "is not valid Python (line"),
    ],
)
def test_a_drill_that_no_longer_applies_should_say_so_naming_drill_and_file(
    tmp_path: Path, find: str, replace: str, expected: str
) -> None:
    text = f"""
    source = "stack"
    [[drill]]
    name = "stale"
    breaks = "nothing any more"
    file = "stack/backend/app.py"
    find = {find!r}
    replace = {replace!r}
    """.replace("'", '"')
    drills = load_drills(write(tmp_path, text))
    with pytest.raises(DrillError) as caught:
        patched_text(drills, drills.drills[0], PROJECT)
    message = str(caught.value)
    assert "drill 'stale': stack/backend/app.py: " in message and expected in message, message


def test_a_drill_of_a_missing_file_should_say_so(tmp_path: Path) -> None:
    text = ONE_DRILL.replace("stack/backend/app.py", "stack/backend/gone.py")
    drills = load_drills(write(tmp_path, text))
    with pytest.raises(DrillError, match="stack/backend/gone.py: no such file"):
        patched_text(drills, drills.drills[0], PROJECT)


def test_every_reference_drill_should_apply_to_the_reference_platform() -> None:
    drills = load_drills(PROJECT / "targets" / "reference" / "drills.toml")
    assert len(drills.drills) >= 20
    for drill in drills.drills:
        patched_text(drills, drill, PROJECT)


def test_the_stack_should_run_the_platform_from_the_source_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SOURCE_ROOT_ENV, str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    stack = Stack(target=load_target("reference"), run_dir=tmp_path / "run").prepare()
    spec = stack._spec("backend")
    assert spec.cwd == tmp_path, "the backend does not run from the scratch copy"
    assert stack.platform_env["PYTHONPATH"] == os.pathsep.join([str(tmp_path), "/elsewhere"])
    monkeypatch.delenv(SOURCE_ROOT_ENV)
    plain = Stack(target=load_target("reference"), run_dir=tmp_path / "run2").prepare()
    assert plain._spec("backend").cwd == PROJECT and "PYTHONPATH" not in plain.platform_env


# -- the journey marker -----------------------------------------------------------------------
def test_the_journey_marker_should_carry_its_drills() -> None:
    mark = journey(name="J", priority="P0", components=["auth"], drills=["a-b", "c1"]).mark
    assert mark.kwargs["drills"] == ["a-b", "c1"]
    assert validate_journey(name="J", priority="P0", components=["auth"]).drills == ()


@pytest.mark.parametrize(
    ("drills", "expected"),
    [
        ("one-drill", "drills must be a list"),
        (["Upper"], "must be lower-case letters, digits and '-'"),
        (["a", "a"], "listed twice"),
    ],
)
def test_the_journey_marker_should_refuse_bad_drills(drills: object, expected: str) -> None:
    with pytest.raises(JourneyMarkerError, match=expected):
        validate_journey(name="J", priority="P0", components=["auth"], drills=drills)


def test_an_unknown_drill_should_be_a_collection_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("THROUGHLINE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PYTHONPATH", str(PROJECT))
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider\n")
    pytester.makeconftest(
        'pytest_plugins = ["harness.plugin", "harness.plugin_browser", "harness.plugin_target"]\n'
    )
    pytester.makepyfile(
        test_j="""
        from harness.journey import journey

        @journey(name="J", priority="P0", components=["auth"], drills=["signup-profile-loses-name"])
        def test_known():
            pass

        @journey(name="J", priority="P0", components=["auth"], drills=["profile-loses-nmae"])
        def test_typo():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--target", "reference", "--collect-only")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            "*test_typo: invalid @pytest.mark.journey: unknown drill(s) 'profile-loses-nmae'; drills of reference: *"
        ]
    )
    assert "test_known" not in "".join(line for line in result.stdout.lines if "unknown drill" in line)


# -- verdicts and the matrix ----------------------------------------------------------------------
DECLARED = ["j.py::test_a", "j.py::test_b"]


def entry(function: str, outcome: str, **extra: object) -> dict[str, object]:
    return {"nodeid": function + "[chromium]", "function": function, "outcome": outcome, **extra}


def result() -> DrillResult:
    return DrillResult(drill="d", breaks="b", declared=list(DECLARED), control="c.py::test_control")


def test_the_first_declared_failure_should_catch_the_drill(tmp_path: Path) -> None:
    entries = [
        entry("c.py::test_control", "passed"),
        entry(
            "j.py::test_a",
            "failed",
            phase="call",
            step="step 2/5 'Log in'",
            error_type="AssertionError",
            message="no",
        ),
    ]
    got = classify(result(), entries, 1, tmp_path / "log")
    assert (got.status, got.caught_by, got.step) == (CAUGHT, "j.py::test_a", "step 2/5 'Log in'")
    assert got.error == "AssertionError: no"
    assert got.outcomes == {"c.py::test_control": "passed", "j.py::test_a": "failed"}


def test_a_drill_that_stops_the_platform_or_breaks_the_control_should_be_too_coarse(tmp_path: Path) -> None:
    start = [
        entry("c.py::test_control", "failed", phase="setup", platform_start=True, message="backend exited")
    ]
    got = classify(result(), start, 1, tmp_path / "log")
    assert got.status == TOO_COARSE and "does not start (backend exited)" in got.detail
    control = [entry("c.py::test_control", "failed", phase="call", step="step 1/4 'Sign up'")]
    got = classify(result(), control, 1, tmp_path / "log")
    assert got.status == TOO_COARSE and "also breaks the control c.py::test_control" in got.detail
    assert got.caught_by is None


def test_a_drill_no_declared_journey_fails_should_survive(tmp_path: Path) -> None:
    entries = [entry(f, "passed") for f in ["c.py::test_control", *DECLARED]]
    assert classify(result(), entries, 0, tmp_path / "log").status == SURVIVED
    assert classify(result(), entries[:2], 0, tmp_path / "log").status == ERROR, "a journey that never ran"
    assert classify(result(), [], None, tmp_path / "log").status == TIMED_OUT


def sample_run() -> ProveRun:
    caught = result()
    caught.status, caught.caught_by, caught.step, caught.seconds = (
        CAUGHT,
        "j.py::test_b",
        "step 3/3 'Stores'",
        12.0,
    )
    caught.outcomes = {"c.py::test_control": "passed", "j.py::test_a": "passed", "j.py::test_b": "failed"}
    survived = DrillResult(drill="longer-drill-name", breaks="b", declared=["k.py::test_k"], status=SURVIVED)
    survived.detail, survived.outcomes = "every journey declaring it passed", {"k.py::test_k": "passed"}
    return ProveRun(
        target="ref 1.0",
        journeys={
            "c.py::test_control": "Control",
            "j.py::test_a": "Journey A",
            "j.py::test_b": "Journey B",
            "k.py::test_k": "K",
        },
        baseline={f: "passed" for f in ["c.py::test_control", *DECLARED, "k.py::test_k"]},
        results=[caught, survived],
    )


def test_the_matrix_should_show_each_drill_against_each_journey() -> None:
    run = sample_run()
    text = render_matrix(run)
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["drill", "J1", "J2", "J3", "J4"]
    row_d = next(line for line in lines if line.startswith("d "))
    assert row_d.split()[1:5] == ["ctl", "pass", "CAUGHT", "caught"], row_d
    assert "caught at step 3/3 'Stores' (12 s)" in row_d
    row_s = next(line for line in lines if line.startswith("longer-drill-name"))
    assert "pass" in row_s and "survived: every journey declaring it passed" in row_s
    assert "  J2 = Journey A" in lines and "  J4 = K" in lines
    assert not run.ok and run.verdict() == "1/2 drills caught by a journey declaring them; 1 survived"


def test_the_detection_section_should_replace_the_placeholder_of_the_report() -> None:
    run = sample_run()
    section = detection_html(run)
    assert section.startswith(DETECTION_START) and section.endswith(DETECTION_END)
    assert "Detection on ref 1.0" in section and "step 3/3 &#x27;Stores&#x27;" in section
    assert "NOT PROVEN" in section
    document = f"<html>{detection_placeholder()}<p>after</p></html>"
    replaced = replace_detection(document, section)
    assert "Not measured in this run" not in replaced and replaced.endswith("<p>after</p></html>")
    assert replaced.count(DETECTION_START) == 1


def test_nothing_should_be_claimed_when_the_baseline_fails() -> None:
    run = sample_run()
    run.baseline["j.py::test_a"] = "failed"
    assert not run.ok and run.verdict().startswith("nothing is claimed")
    round_trip = ProveRun.from_mapping(__import__("json").loads(run.to_json()))
    assert round_trip.results[0].step == "step 3/3 'Stores'" and round_trip.baseline == run.baseline


def test_an_installed_package_should_be_drilled_in_a_copy_first_on_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    (site / "toypkg").mkdir(parents=True)
    (site / "toypkg" / "__init__.py").write_text("LIMIT = 5\n")
    monkeypatch.syspath_prepend(str(site))
    drills = load_drills(
        write(
            tmp_path,
            """
            package = "toypkg"
            [[drill]]
            name = "limit-off-by-one"
            breaks = "one more attempt than allowed"
            file = "toypkg/__init__.py"
            find = "LIMIT = 5"
            replace = "LIMIT = 6"
            """,
        )
    )
    assert drills.original_root() == site.resolve() and drills.top == "toypkg"
    with scratch_copy(drills, drills.drills[0]) as root:
        assert (root / "toypkg" / "__init__.py").read_text() == "LIMIT = 6\n"
    assert (site / "toypkg" / "__init__.py").read_text() == "LIMIT = 5\n", "the installed package was edited"
    missing = load_drills(write(tmp_path, (tmp_path / "drills.toml").read_text().replace("toypkg", "nopkg")))
    with pytest.raises(DrillError, match="package 'nopkg' is not installed"):
        missing.original_root()


def test_the_matrix_should_mark_a_failed_control() -> None:
    run = sample_run()
    coarse = DrillResult(drill="blunt", breaks="b", declared=["k.py::test_k"], control="c.py::test_control")
    coarse.status, coarse.detail = TOO_COARSE, "it also breaks the control c.py::test_control"
    coarse.outcomes = {"c.py::test_control": "failed"}
    run.results.append(coarse)
    row = next(line for line in render_matrix(run).splitlines() if line.startswith("blunt"))
    assert row.split()[1:3] == ["ctl!", "-"] and "too coarse: it also breaks the control" in row, row


def test_a_release_report_should_show_a_prove_result_as_its_detection_section(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in [n for n in os.environ if n.startswith("THROUGHLINE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PYTHONPATH", str(PROJECT))
    proved = sample_run()
    proved.finished_at = "2026-12-01T15:55:00+00:00"
    (tmp_path / "prove.json").write_text(proved.to_json())
    pytester.makeconftest(
        'pytest_plugins = ["harness.plugin", "harness.plugin_browser", "harness.plugin_target"]\n'
    )
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    args = ["--target", "reference", "-p", "no:cacheprovider", "--self-contained-html"]

    pytester.runpytest_subprocess(*args, "--html=plain.html")
    pytester.runpytest_subprocess(*args, "--html=proved.html", f"--detection={tmp_path / 'prove.json'}")

    plain = (pytester.path / "plain.html").read_text()
    assert "Not measured in this run: <code>throughline prove</code>" in plain
    page = (pytester.path / "proved.html").read_text()
    assert "Detection on ref 1.0" in page and "measured 2026-12-01T15:55:00+00:00" in page
    assert "Not measured in this run" not in page


# -- a pip-installed platform in its own venv (open-webui) ----------------------------------------
def test_a_package_of_another_interpreter_should_be_found_with_it_and_its_big_folders_linked(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    (site / "toypkg" / "frontend").mkdir(parents=True)
    (site / "toypkg" / "__init__.py").write_text("LIMIT = 5\n")
    (site / "toypkg" / "frontend" / "index.html").write_text("<html></html>\n")
    # The target's interpreter, as prove runs it: `python -I -c <find the package> toypkg`.
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\n[ "$1" = -I ] && [ "$4" = toypkg ] && echo {site / "toypkg"}\n')
    python.chmod(0o755)
    drills = load_drills(
        write(
            tmp_path,
            f"""
            package = "toypkg"
            python = "{python}"
            link = ["toypkg/frontend"]
            [[drill]]
            name = "limit-off-by-one"
            breaks = "one more attempt than allowed"
            file = "toypkg/__init__.py"
            find = "LIMIT = 5"
            replace = "LIMIT = 6"
            """,
        )
    )
    assert drills.original_root() == site.resolve()
    with scratch_copy(drills, drills.drills[0]) as root:
        assert (root / "toypkg" / "__init__.py").read_text() == "LIMIT = 6\n"
        linked = root / "toypkg" / "frontend"
        assert linked.is_symlink() and linked.resolve() == (site / "toypkg" / "frontend").resolve()
    assert (site / "toypkg" / "__init__.py").read_text() == "LIMIT = 5\n", "the installed package was edited"
    assert (site / "toypkg" / "frontend" / "index.html").is_file(), "removing the copy followed the link"
    text = (tmp_path / "drills.toml").read_text()
    with pytest.raises(DrillError, match="is not installed for"):
        load_drills(write(tmp_path, text.replace("toypkg", "nopkg"))).original_root()
    with pytest.raises(DrillError, match="inside a linked folder"):
        load_drills(
            write(tmp_path, text.replace('file = "toypkg/__init__.py"', 'file = "toypkg/frontend/x.py"'))
        )
    with pytest.raises(DrillError, match="'link' goes with 'package' only"):
        load_drills(
            write(tmp_path, ONE_DRILL.replace('source = "stack"', 'source = "stack"\nlink = ["stack/x"]'))
        )


def test_the_open_webui_drills_should_apply_to_the_installed_open_webui() -> None:
    drills = load_drills(PROJECT / "targets" / "open_webui" / "drills.toml")
    try:
        root = drills.original_root()
    except DrillError as exc:
        pytest.skip(f"Open WebUI is not installed here: {exc}")
    assert len(drills.drills) >= 10 and all(d.name.startswith("owui-") for d in drills.drills)
    for drill in drills.drills:
        patched_text(drills, drill, root)  # DrillError when Open WebUI changed under it


def test_a_baseline_may_stop_at_a_registered_defect_or_be_not_applicable(tmp_path: Path) -> None:
    run = sample_run()
    run.baseline.update({"j.py::test_a": "xfailed", "k.py::test_k": "not applicable"})
    assert run.baseline_ok, "a strict xfail of a registered defect is what the unpatched target does"
    run.baseline["k.py::test_k"] = "xfailed (no registered defect)"
    assert not run.baseline_ok and "k.py::test_k" in run.verdict()
    # Under a drill, a declaring journey that stops at its registered defect did not catch it.
    entries = [entry("c.py::test_control", "passed"), *(entry(f, "xfailed") for f in DECLARED)]
    assert classify(result(), entries, 0, tmp_path / "log").status == SURVIVED


def test_only_a_registered_defect_that_still_stands_should_count_as_xfailed() -> None:
    from types import SimpleNamespace

    from harness.plugin_prove import _skipped_outcome
    from harness.report import DEFECT_STATUS_ATTR

    standing = SimpleNamespace(wasxfail="OWUI-1", **{DEFECT_STATUS_ATTR: ("OWUI-1", "xfailed")})
    assert _skipped_outcome(standing) == "xfailed"  # type: ignore[arg-type]
    assert _skipped_outcome(SimpleNamespace(wasxfail="a plain xfail")) == "xfailed (no registered defect)"  # type: ignore[arg-type]
    assert _skipped_outcome(SimpleNamespace()) == "skipped"  # type: ignore[arg-type]


def test_a_parametrized_journey_should_show_its_most_telling_outcome() -> None:
    from harness.detection import merge_outcome

    def merged(*outcomes: str) -> str:
        shown: str | None = None
        for outcome in outcomes:
            shown = merge_outcome(shown, outcome)
        assert shown is not None
        return shown

    assert merged("passed", "passed", "not applicable") == "passed", "a case not applicable hides no pass"
    assert merged("xfailed (no registered defect)", "not applicable") == "xfailed (no registered defect)"
    assert merged("passed", "xfailed") == "xfailed"
    assert merged("failed", "passed", "skipped") == "failed"
    run = sample_run()
    run.results[1].outcomes = {"k.py::test_k": "xfailed"}
    assert run.cells(run.results[1])["K"] == "xf"
