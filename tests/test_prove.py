"""`throughline prove` end to end on the reference target: two cheap drills, caught for real.

No mock anywhere: the command collects the journeys, runs the unpatched baseline, then starts the
whole reference platform from a patched scratch copy per drill and runs the declaring journeys in
Chromium. Kept to two drills whose journeys are quick; the full run is documented in docs/prove.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from harness.detection import CAUGHT, TOO_COARSE, ProveRun

PROJECT = Path(__file__).resolve().parent.parent
CHEAP_DRILLS = ("http-limit-keyed-by-ip", "login-skips-verification")


def prove(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THROUGHLINE_")}
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "prove", *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_prove_should_catch_two_drills_with_the_journeys_declaring_them(tmp_path: Path) -> None:
    report = tmp_path / "prove.html"
    done = prove("--only", ",".join(CHEAP_DRILLS), "--report", str(report))
    assert done.returncode == 0, f"prove exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    run = ProveRun.load(report.with_suffix(".json"))
    assert run.baseline_ok, f"the unpatched baseline did not pass: {run.baseline}"
    assert [r.drill for r in run.results] == list(CHEAP_DRILLS)
    for result in run.results:
        assert result.status == CAUGHT, f"{result.drill}: {result.status} {result.detail}"
        assert result.caught_by in result.declared, f"{result.drill} caught by a journey not declaring it"
        assert result.step and result.step.startswith("step "), f"{result.drill}: no failing step recorded"
        assert result.control and result.outcomes[result.control] == "passed", "the control did not run first"
    assert "2/2 drills caught by a journey declaring them" in done.stdout
    assert "CAUGHT" in done.stdout and "J1 = " in done.stdout, "no drill x journey matrix printed"
    page = report.read_text()
    assert "Detection on reference" in page and "Not measured in this run" not in page
    assert "Release summary" in page, "the Detection section is not in the baseline's release report"


def test_prove_should_refuse_an_unknown_drill_in_one_line(tmp_path: Path) -> None:
    done = prove("--only", "no-such-drill", "--report", str(tmp_path / "p.html"), timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "unknown drill(s) no-such-drill in --only" in done.stderr


def test_prove_should_stop_before_running_anything_when_a_drill_no_longer_applies(tmp_path: Path) -> None:
    target = tmp_path / "stale_target"
    shutil.copytree(PROJECT / "targets" / "reference", target, ignore=shutil.ignore_patterns("__pycache__"))
    drills = (target / "drills.toml").read_text()
    (target / "drills.toml").write_text(
        drills.replace('return None if alive else "session revoked"', 'return None if alive else "gone"', 1)
    )
    done = prove("--target", str(target), "--report", str(tmp_path / "p.html"), timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        "drill 'open-socket-outlives-logout': stack/backend/auth.py: the text to find no longer occurs"
        in done.stderr
    )
    assert not (tmp_path / "p-logs").exists(), "journeys ran although a drill does not apply"


def test_prove_should_call_a_drill_that_stops_the_platform_too_coarse(tmp_path: Path) -> None:
    target = tmp_path / "coarse_target"
    shutil.copytree(PROJECT / "targets" / "reference", target, ignore=shutil.ignore_patterns("__pycache__"))
    drills = (target / "drills.toml").read_text()
    start = drills.index('name = "http-limit-keyed-by-ip"')
    end = drills.index("[[drill]]", start)
    blunt = """name = "http-limit-keyed-by-ip"
breaks = "a refactor renamed the backend's logging module: the backend no longer starts"
file = "stack/backend/__main__.py"
find = "from .log import setup_logging"
replace = "from .logging_setup import setup_logging"

"""
    (target / "drills.toml").write_text(drills[:start] + blunt + drills[end:])
    report = tmp_path / "p.html"
    done = prove("--target", str(target), "--only", "http-limit-keyed-by-ip", "--report", str(report))
    assert done.returncode == 1, done.stdout + done.stderr
    (result,) = ProveRun.load(report.with_suffix(".json")).results
    assert result.status == TOO_COARSE and result.caught_by is None, result
    assert result.detail.startswith("the platform does not start"), result.detail
    assert "0/1 drills caught by a journey declaring them; 1 too coarse" in done.stdout
