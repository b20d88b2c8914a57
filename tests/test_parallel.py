"""Shards, workers and merged reports, in real pytest runs (harness/plugin_parallel.py, merge.py).

- The split: every test in exactly one shard, for any n, by durations and without them.
- Bad input: one line and exit 2, nothing written.
- Worker isolation: two xdist workers, two stacks of the toy target (own run dir, own ports), and
  a worker that dies is named with its services' log tails and leaves no process behind.
- Real journeys: a journey file run in two shards, then merged: the same tests and counts as
  the same file run with two workers, one report, one JUnit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.plugin_parallel import ParallelError, load_durations, parse_shard
from harness.process import is_port_free
from harness.results import RunResults
from tests.toy_project import CONFTEST, INI, ROOT, TOY

pytest_plugins = ["pytester"]

JOURNEY_FILE = "journeys/test_real_websocket_auth_integration.py"


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A throwaway project running Throughline's plugins, no THROUGHLINE_* setting leaking in."""
    for name in [n for n in os.environ if n.startswith(("THROUGHLINE_", "PYTEST_XDIST"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    return pytester


def _selected(pytester: pytest.Pytester, *args: str) -> list[str]:
    """The node ids a --collect-only run keeps."""
    result = pytester.runpytest_inprocess("--collect-only", "-q", f"--target={TOY}", *args)
    assert result.ret in (0, 5), result.stdout.str()
    return [line for line in result.outlines if "::" in line and not line.startswith(" ")]


# -- the split -----------------------------------------------------------------------------
def test_every_test_lands_in_exactly_one_shard_for_any_n(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_many="\n".join(f"def test_{i}():\n    pass\n" for i in range(7)),
    )
    durations = project.path / "durations.json"
    all_ids = _selected(project)
    assert len(all_ids) == 7
    # With durations for some tests (the rest count as the average one), and with none at all.
    durations.write_text(json.dumps({all_ids[0]: 30.0, all_ids[1]: 10.0, all_ids[2]: 5.0}))
    for path in (str(durations), str(project.path / "none.json")):
        for total in range(1, 10):
            shards = [
                _selected(project, "--shard", f"{i}/{total}", "--durations-path", path)
                for i in range(1, total + 1)
            ]
            flat = [nid for shard in shards for nid in shard]
            assert sorted(flat) == sorted(all_ids), f"n={total}, durations {path}: {shards}"
            if total <= 7:
                assert all(shards), f"n={total}: an empty shard while tests remain: {shards}"


def test_shards_are_balanced_by_recorded_durations(project: pytest.Pytester) -> None:
    project.makepyfile(test_many="\n".join(f"def test_{i}():\n    pass\n" for i in range(4)))
    ids = _selected(project)
    durations = project.path / "durations.json"
    durations.write_text(json.dumps({ids[0]: 60.0, ids[1]: 20.0, ids[2]: 20.0, ids[3]: 20.0}))
    one = _selected(project, "--shard", "1/2", "--durations-path", str(durations))
    two = _selected(project, "--shard", "2/2", "--durations-path", str(durations))
    assert {frozenset(one), frozenset(two)} == {frozenset([ids[0]]), frozenset(ids[1:])}


def test_a_shard_with_no_test_left_is_green(project: pytest.Pytester) -> None:
    project.makepyfile(test_one="def test_only():\n    pass\n")
    result = project.runpytest_inprocess(f"--target={TOY}", "--shard", "3/3")
    assert result.ret == 0, result.stdout.str()


def test_the_committed_durations_cover_the_reference_journeys() -> None:
    recorded = load_durations(ROOT / "targets" / "reference" / "durations.json")
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "journeys", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    ids = {line for line in listed.stdout.splitlines() if "::" in line}
    assert ids, listed.stdout + listed.stderr
    missing = sorted(ids - set(recorded))
    assert not missing, f"journeys without a recorded duration (run `make durations`): {missing}"


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard", "3/2"], "--shard 3/2: the shard must be between 1 and 2"),
        (["--shard", "0/2"], "--shard 0/2: the shard must be between 1 and 2"),
        (["--shard", "two"], "--shard 'two': expected i/n"),
        (["-n", "0"], "-n 0: the number of workers must be at least 1"),
        (["-n", "many"], "-n 'many': the number of workers must be a whole number"),
    ],
)
def test_bad_shard_or_worker_input_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    reports = tmp_path / "reports"
    result = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--reports", str(reports), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [f"throughline: {message}"] or result.stderr.startswith(
        f"throughline: {message}"
    ), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not reports.exists(), "a refused run wrote its reports folder"


def test_a_corrupt_durations_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    target = tmp_path / "toy"
    target.mkdir()
    for name in ("target.toml", "services.toml", "server.py", "seed.py"):
        (target / name).write_text((TOY / name).read_text())
    (target / "durations.json").write_text('{"journeys/x.py::test": "slow"')
    reports = tmp_path / "reports"
    result = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--target", str(target), "--reports", str(reports)]
        + ["--shard", "1/2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "corrupt durations file" in lines[0] and str(target) in lines[0], lines
    assert not reports.exists()
    with pytest.raises(ParallelError, match="expected a JSON object"):
        (target / "durations.json").write_text("[1, 2]")
        load_durations(target / "durations.json")
    assert parse_shard(" 2 / 3 ").index == 2


# -- workers: isolated worlds, a crash named ----------------------------------------------------
WORKER_TESTS = """
import json, os, signal
from pathlib import Path

OUT = Path(os.environ["WORLDS_OUT"])


def _note(stack, name):
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.json").write_text(json.dumps(
        {"run_dir": str(stack.run_dir), "ports": stack.ports, "pid": os.getpid()}
    ))


def test_one(stack):
    _note(stack, "one")


def test_two(stack):
    _note(stack, "two")
"""


def test_each_worker_gets_a_world_of_its_own(
    project: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(test_worlds=WORKER_TESTS)
    out = tmp_path / "worlds"
    monkeypatch.setenv("WORLDS_OUT", str(out))
    # --dist each: both workers run both tests, so both stacks are up at the same time.
    result = project.runpytest_subprocess(
        str(project.path),
        f"--target={TOY}",
        "-n",
        "2",
        "--dist",
        "each",
        "--reports",
        str(tmp_path / "reports"),
    )
    assert result.ret == 0, result.stdout.str()
    worlds = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert sorted(worlds) == ["one-gw0", "one-gw1", "two-gw0", "two-gw1"], worlds
    gw0, gw1 = worlds["one-gw0"], worlds["one-gw1"]
    assert gw0["pid"] != gw1["pid"], "both workers ran in one process"
    assert gw0["run_dir"] != gw1["run_dir"], f"both workers' stacks share a run directory: {gw0['run_dir']}"
    shared = set(gw0["ports"].values()) & set(gw1["ports"].values())
    assert not shared, f"both workers' stacks use the ports {shared}"
    assert worlds["two-gw0"]["run_dir"] == gw0["run_dir"], "a worker restarted its stack between tests"
    # Each worker's stack is gone at the end, and its artifacts have a folder of their own.
    assert not Path(gw0["run_dir"]).exists() and not Path(gw1["run_dir"]).exists()
    results = RunResults.load(tmp_path / "reports" / "latest" / "results.json")
    assert results.workers == 2
    assert sorted(results.worker_environments) == ["gw0", "gw1"]


CRASH_TESTS = """
import json, os, signal
from pathlib import Path


def test_dies(stack):
    Path(os.environ["CRASH_OUT"]).write_text(json.dumps({"ports": stack.ports, "run_dir": str(stack.run_dir)}))
    os.kill(os.getpid(), signal.SIGKILL)  # the worker dies mid-test, as a segfault would


def test_fine(stack):
    assert stack.urls["a_url"]
"""


def test_a_worker_that_dies_is_named_with_its_log_tails_and_leaves_nothing(
    project: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(test_crash=CRASH_TESTS)
    out = tmp_path / "crash.json"
    monkeypatch.setenv("CRASH_OUT", str(out))
    result = project.runpytest_subprocess(
        str(project.path),
        f"--target={TOY}",
        "-n",
        "2",
        "--reports",
        str(tmp_path / "reports"),
        "--max-worker-restart",
        "1",
    )
    text = result.stdout.str()
    assert result.ret == 1, text
    result.stdout.fnmatch_lines(["*worker gw* crashed (the process died) while running *test_dies*"])
    assert "Service log: a (gw" in text and "Service log: b (gw" in text, text
    seen = json.loads(out.read_text())
    assert not Path(seen["run_dir"]).exists(), "the dead worker's stack left its run directory"
    assert all(is_port_free(port) for port in seen["ports"].values()), (
        f"a service of the dead worker still listens: {seen['ports']}"
    )
    results = RunResults.load(tmp_path / "reports" / "latest" / "results.json")
    assert results.counts()["failed"] == 1 and results.counts()["passed"] == 1


# -- real journeys: two shards merged == two workers ---------------------------------------------
def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def journey_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One journey file: run as shard 1/2 and 2/2, and with two workers (the folders of each run)."""
    base = tmp_path_factory.mktemp("journey-runs")
    runs = {}
    for name, extra in (
        ("shard1", ["--shard", "1/2"]),
        ("shard2", ["--shard", "2/2"]),
        ("workers", ["-n", "2"]),
    ):
        done = _run("run", JOURNEY_FILE, "--reports", str(base / name), *extra, "-p", "no:cacheprovider")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        runs[name] = (base / name / "latest").resolve()
    return runs


def test_two_shards_merge_into_the_counts_of_one_run(journey_runs: dict[str, Path], tmp_path: Path) -> None:
    merged_dir = tmp_path / "merged"
    done = _run(
        "report", "merge", str(journey_runs["shard1"]), str(journey_runs["shard2"]), "--out", str(merged_dir)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    merged = RunResults.load(merged_dir / "results.json")
    whole = RunResults.load(journey_runs["workers"] / "results.json")
    assert sorted(merged.tests) == sorted(whole.tests), "the shards together did not run the file's tests"
    assert merged.counts() == whole.counts()
    assert {t.shard for t in merged.tests.values()} == {"1/2", "2/2"}
    assert {t.worker for t in whole.tests.values()} == {"gw0", "gw1"}
    suite = ET.parse(merged_dir / "junit.xml").getroot().find("testsuite")
    assert suite is not None and int(suite.get("tests") or 0) == len(whole.tests)
    assert int(suite.get("failures") or 0) == 0
    shards = {p.get("value") for p in suite.iter("property") if p.get("name") == "shard"}
    assert shards == {"1/2", "2/2"}
    document = (merged_dir / "report.html").read_text()
    assert "Release summary" in document and "GREEN" in document
    for nodeid in whole.tests:
        assert nodeid in document, f"{nodeid} is missing from the merged report"


def test_a_merge_of_what_does_not_belong_together_is_refused(
    journey_runs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    # The same tests twice.
    done = _run(
        "report", "merge", str(journey_runs["shard1"]), str(journey_runs["workers"]), "--out", str(out)
    )
    assert done.returncode == 2 and "ran twice" in done.stderr, done.stderr
    # Another target, another commit.
    for field, value, words in (
        ("target", "open-webui", "different targets"),
        ("commit", "0" * 40, "different commits"),
    ):
        other = tmp_path / f"other-{field}"
        other.mkdir()
        data = json.loads((journey_runs["shard2"] / "results.json").read_text())
        data[field] = value
        (other / "results.json").write_text(json.dumps(data))
        (other / "junit.xml").write_text((journey_runs["shard2"] / "junit.xml").read_text())
        done = _run("report", "merge", str(journey_runs["shard1"]), str(other), "--out", str(out))
        assert done.returncode == 2, done.stdout + done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and words in done.stderr, done.stderr
    done = _run("report", "merge", str(tmp_path / "nothing-here"), "--out", str(out))
    assert done.returncode == 2 and "no such file or folder" in done.stderr
    assert not out.exists(), "a refused merge wrote its output"


def test_each_run_keeps_its_own_folder_and_latest_points_at_the_newest(journey_runs: dict[str, Path]) -> None:
    for name, run in journey_runs.items():
        assert (run / "report.html").is_file() and (run / "junit.xml").is_file(), name
        assert run.parent.name == "runs" and (run.parent.parent / "latest").resolve() == run
    workers = RunResults.load(journey_runs["workers"] / "results.json")
    assert workers.workers == 2 and workers.target == "reference"
    # What only a worker knew reached the controller's report: the journey, its steps, the stack.
    assert all(t.journey and t.steps for t in workers.tests.values()), workers.tests
    assert {t.worker for t in workers.tests.values()} == {"gw0", "gw1"}
    runs = {k: v for k, v in workers.merged_environment().items() if k.startswith("run_dir")}
    assert sorted(runs) == ["run_dir (gw0)", "run_dir (gw1)"] and len(set(runs.values())) == 2, runs
    document = (journey_runs["workers"] / "report.html").read_text()
    journey = next(iter(workers.tests.values())).journey or {}
    assert "Release summary" in document and journey["name"] in document and "2 workers" in document


def test_two_runs_at_once_in_one_checkout_keep_both_sets(project: pytest.Pytester, tmp_path: Path) -> None:
    project.makepyfile(test_quick="def test_quick(stack):\n    assert stack.urls['a_url']\n")
    reports = tmp_path / "reports"
    argv = [sys.executable, "-m", "pytest", str(project.path), f"--target={TOY}", "--reports", str(reports)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [
        subprocess.Popen(argv, cwd=project.path, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    folders = sorted((reports / "runs").iterdir())
    assert len(folders) == 2, f"two runs at once share a folder: {folders}"
    for folder in folders:
        assert {"report.html", "junit.xml", "results.json"} <= {p.name for p in folder.iterdir()}, folder
        assert list(RunResults.load(folder / "results.json").tests) == ["test_quick.py::test_quick"]
    assert (reports / "latest").resolve() in folders
