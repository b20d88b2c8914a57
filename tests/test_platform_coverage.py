"""Coverage of the platform under test (`--platform-coverage`, harness/platform_coverage.py).

- A real run of one journey file on the reference target: figures per service (auth, backend,
  frontend), a file the journey runs has its lines covered, a file no service of it imports is
  listed as never entered, the framework and the stand-ins are not counted, the report shows it.
- Two xdist workers, each with its own stack, measured into one figure per service.
- `throughline report merge` combines the shards' data again.
- Bad input: one line, exit 2, nothing written.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import platform_coverage
from harness.declaration import DeclarationError, load_declaration
from harness.results import RunResults

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "tests" / "toy_target"
JOURNEY_FILE = "journeys/test_real_database_consistency.py"
FRAMEWORK = ("harness/", "journeys/", "pages/", "targets/", "tests/", "db_probes/", "stack/externals/")


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def measured_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One journey file run on the reference target with --platform-coverage: its run folder."""
    reports = tmp_path_factory.mktemp("coverage-run")
    done = _run(
        "run", JOURNEY_FILE, "--platform-coverage", "--reports", str(reports), "-p", "no:cacheprovider"
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "platform coverage" in done.stdout, "the terminal summary has no platform coverage section"
    return (reports / "latest").resolve()


def _figures(run: Path) -> dict[str, Any]:
    figures = RunResults.load(run / "results.json").platform_coverage
    assert figures is not None, "results.json has no platform_coverage of a --platform-coverage run"
    return figures


def test_each_platform_service_has_its_figures(measured_run: Path) -> None:
    figures = _figures(measured_run)
    assert sorted(figures["services"]) == ["auth", "backend", "frontend"], (
        "measured services are not the reference platform's three (stand-ins and stores are not measured)"
    )
    for name, svc in figures["services"].items():
        assert 0 < svc["line_percent"] <= 100, f"{name}: line coverage {svc['line_percent']} out of (0, 100]"
        assert svc["branch_percent"] is not None and 0 < svc["branch_percent"] <= 100, f"{name}: branches"
        assert 0 < svc["lines_covered"] <= svc["lines_total"], f"{name}: {svc['lines_covered']} covered lines"
        assert svc["line_percent"] == pytest.approx(100 * svc["lines_covered"] / svc["lines_total"], abs=0.01)
    total = figures["total"]
    assert 0 < total["line_percent"] <= 100 and total["branch_percent"] is not None
    # the per-service data is in the run folder, one combined file per service
    for name in figures["services"]:
        assert (measured_run / "coverage" / name / ".coverage").is_file(), f"no combined data for {name}"


def test_a_file_the_journey_runs_is_covered_and_the_framework_is_not_counted(measured_run: Path) -> None:
    figures = _figures(measured_run)
    backend = {f["path"]: f for f in figures["services"]["backend"]["files"]}
    app = backend.get("stack/backend/app.py")
    assert app is not None, f"stack/backend/app.py is not in the backend's files: {sorted(backend)}"
    assert app["line_percent"] > 0 and app["missing"] < app["lines_total"], "backend app.py shows no line run"
    assert "stack/backend/app.py" not in figures["services"]["backend"]["never_entered"]
    for name, svc in figures["services"].items():
        counted = [f["path"] for f in svc["files"]]
        assert not [p for p in counted if p.startswith(FRAMEWORK)], (
            f"{name} counts framework or stand-in code"
        )
        assert all(p.startswith("stack/") for p in counted), f"{name}: files outside the platform: {counted}"


def _imports_of(folder: Path, skip: Path | None = None) -> set[str]:
    seen: set[str] = set()
    for path in folder.glob("*.py"):
        if path == skip:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                seen.add(node.module)
            elif isinstance(node, ast.Import):
                seen.update(alias.name for alias in node.names)
    return seen


def test_files_the_backend_runs_are_never_listed_as_never_entered(measured_run: Path) -> None:
    # Since its JSON 500s the backend imports every stack.common module, so none of its measured
    # files is a never-entered one here (the two-worker toy test covers a file that is listed).
    backend = _figures(measured_run)["services"]["backend"]
    files = {f["path"]: f for f in backend["files"]}
    for path in ("stack/common/errors.py", "stack/common/request_id.py", "stack/backend/chat.py"):
        assert path not in backend["never_entered"], f"backend: {path} runs, yet is listed as never entered"
        assert files[path]["line_percent"] > 0, f"backend: {path} runs, yet has no line covered"
    for path in backend["never_entered"]:
        assert files[path]["line_percent"] == 0 and files[path]["lines_total"] > 0, path


def test_the_report_shows_coverage_per_service_and_per_file(measured_run: Path) -> None:
    document = (measured_run / "report.html").read_text()
    assert "Platform coverage" in document, "report.html has no platform coverage section"
    for name in ("auth", "backend", "frontend"):
        assert f"<td>{name}</td>" in document, f"the coverage table has no row for {name}"
    assert "<details class='tl-coverage-files'><summary>backend:" in document, "no per-file table of backend"
    assert "stack/backend/app.py" in document and "never entered" in document


def test_report_merge_combines_the_coverage_data_again(measured_run: Path, tmp_path: Path) -> None:
    merged = platform_coverage.merge_dirs([measured_run / "coverage", measured_run / "coverage"], tmp_path)
    single = _figures(measured_run)
    assert merged is not None
    for name, svc in single["services"].items():
        # the same data twice is the same lines, not twice as many
        assert merged["services"][name]["lines_covered"] == svc["lines_covered"], name
        assert merged["services"][name]["lines_total"] == svc["lines_total"], name


# -- workers: each with its own stack, one figure per service -----------------------------------
TOY_TESTS = """
import urllib.request


def test_a(stack):
    urllib.request.urlopen(stack.urls["a_url"] + "/info").read()


def test_b(stack):
    urllib.request.urlopen(stack.urls["b_url"] + "/health").read()
"""


def _toy_package_target(folder: Path) -> Path:
    """The toy target with its server as a package (`python -m toyserver`), so it can be measured."""
    folder.mkdir()
    (folder / "toyserver").mkdir()
    (folder / "toyserver" / "__init__.py").write_text("")
    (folder / "toyserver" / "__main__.py").write_text((TOY / "server.py").read_text())
    (folder / "toyserver" / "unused.py").write_text("def never_called():\n    return 1\n")
    for name in ("target.toml", "seed.py"):
        shutil.copyfile(TOY / name, folder / name)
    services = (TOY / "services.toml").read_text()
    for svc in ("a", "b"):
        services = services.replace(
            f'command = ["{{python}}", "{{target_dir}}/server.py", "--port", "{{port}}", "--name", "{svc}"]',
            f'command = ["{{python}}", "-m", "toyserver", "--port", "{{port}}", "--name", "{svc}"]\n'
            'cwd = "{target_dir}"',
        )
    assert services.count("-m") == 2, "the toy target's services.toml changed: update this test"
    (folder / "services.toml").write_text(services)
    return folder


def test_two_workers_are_combined_per_service(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith(("THROUGHLINE_", "PYTEST_XDIST"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    target = _toy_package_target(tmp_path / "toy")
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = session\n"
        "asyncio_default_test_loop_scope = session\naddopts = -p no:cacheprovider\n"
    )
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    pytester.makepyfile(test_toy=TOY_TESTS)
    reports = tmp_path / "reports"
    result = pytester.runpytest_subprocess(
        str(pytester.path),
        f"--target={target}",
        "-n",
        "2",
        "--dist",
        "each",
        "--platform-coverage",
        "--reports",
        str(reports),
    )
    assert result.ret == 0, result.stdout.str()
    figures = RunResults.load(reports / "latest" / "results.json").platform_coverage
    assert figures is not None and sorted(figures["services"]) == ["a", "b"], figures
    folder = reports / "latest" / "coverage" / "a"
    assert not list(folder.glob(".coverage.*")), "per-process data files were left uncombined"
    a = figures["services"]["a"]
    assert a["never_entered"] == ["toyserver/unused.py"], a["never_entered"]
    main = next(f for f in a["files"] if f["path"] == "toyserver/__main__.py")
    assert main["line_percent"] > 0, "the toy server's main module shows no line run"


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["-1", "100.5", "101", "lots", "nan", ""])
def test_a_threshold_out_of_0_to_100_is_one_clear_line(text: str) -> None:
    with pytest.raises(platform_coverage.PlatformCoverageError) as caught:
        platform_coverage.parse_threshold(text)
    message = str(caught.value)
    assert "\n" not in message and "0 to 100" in message, message


@pytest.mark.parametrize("text", ["0", "60", "100", "72.5"])
def test_a_threshold_from_0_to_100_is_accepted(text: str) -> None:
    assert platform_coverage.parse_threshold(text) == float(text)


def test_platform_coverage_of_an_external_target_is_one_line_and_exit_2(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    done = _run("run", "--target", "external", "--platform-coverage", "--reports", str(reports), timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "runs elsewhere" in lines[0], lines
    assert not reports.exists(), "a refused run wrote its reports folder"


def test_a_service_whose_python_lacks_coverage_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bare = shutil.which("python3", path="/usr/bin")
    if bare is None or platform_coverage.has_coverage(bare):
        pytest.fail("this test needs a Python without coverage.py at /usr/bin/python3 (Debian's)")
    target = _toy_package_target(tmp_path / "toy")
    services = (target / "services.toml").read_text().replace('"{python}"', f'"{bare}"')
    (target / "services.toml").write_text(services)
    reports = tmp_path / "reports"
    done = _run("run", "--target", str(target), "--platform-coverage", "--reports", str(reports), timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"coverage.py is not installed in {bare}" in lines[0], lines
    assert not reports.exists()


def test_a_coverage_entry_that_is_not_a_package_name_is_a_declaration_error(tmp_path: Path) -> None:
    path = tmp_path / "services.toml"
    path.write_text('[services.app]\ncommand = ["python", "-m", "app"]\ncoverage = ["not a package"]\n')
    with pytest.raises(DeclarationError, match=r"services\.app\.coverage: 'not a package'"):
        load_declaration(path)
    path.write_text('[services.app]\ncommand = ["python", "-m", "app"]\ncoverage = "app"\n')
    with pytest.raises(DeclarationError, match="must be a list of strings"):
        load_declaration(path)


def test_the_measured_command_runs_the_same_program_under_coverage(tmp_path: Path) -> None:
    rc = tmp_path / ".coveragerc"
    assert platform_coverage.wrap_command(["/venv/bin/python", "-m", "stack.backend", "--port", "1"], rc) == [
        "/venv/bin/python", "-m", "coverage", "run", "--rcfile", str(rc), "-m", "stack.backend", "--port", "1"
    ]  # fmt: skip
    script = tmp_path / "open-webui"
    script.write_text(f"#!{sys.executable}\nimport sys\n")
    assert platform_coverage.wrap_command([str(script), "serve"], rc) == [
        sys.executable, "-m", "coverage", "run", "--rcfile", str(rc), str(script), "serve"
    ]  # fmt: skip
    assert platform_coverage.wrap_command(["/usr/bin/redis-server", "--port", "1"], rc) is None
    assert json.loads(json.dumps(platform_coverage.measured_packages(load_declaration(
        ROOT / "targets" / "reference" / "services.toml").services["backend"]))) == ["stack.backend", "stack.common"]  # fmt: skip
