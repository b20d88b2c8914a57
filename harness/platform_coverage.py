"""Coverage of the platform under test (`--platform-coverage`, docs/platform-coverage.md).

Every Python service of the platform's own (kind "app": not a store, not a third party's
stand-in) runs under coverage.py: its command `python -m pkg ...` becomes
`python -m coverage run --rcfile <its rcfile> -m pkg ...`, and a console script (Open WebUI's
`open-webui serve`) runs under the interpreter of its shebang the same way. coverage.py rather
than a tracer of our own: it is the well-kept standard, saves on SIGTERM (`sigterm = true`),
gives every process a data file of its own (`parallel = true`: a restarted service keeps
adding), finds the files a process never imported (`source_pkgs`) and combines them all.

Data lands in <coverage dir>/<service>/ (the run folder's `coverage/` under `--reports`), one
file per process and xdist worker; `summarize()` combines each service's files and reads the
figures back through coverage.py's own JSON report. Only the declared packages are measured
(`coverage = [...]` of the service in services.toml, else the module of `python -m`), so the
framework (harness/, journeys/, pages/, targets/, tests/) and the stand-ins never count.

A SIGKILLed process cannot save: what it ran since it started is lost (the error-recovery
journey kills the backend once); a graceful stop or restart saves first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.declaration import Declaration, ServiceDecl

DATA_FILE = ".coverage"
RC_FILE = ".coveragerc"
_PYTHON_NAME = re.compile(r"^python[0-9.]*$")


class PlatformCoverageError(ValueError):
    """Bad coverage input; the message is one line for the user."""


def parse_threshold(text: str | float) -> float:
    """A coverage threshold in percent, 0 to 100 (for the coverage gate); PlatformCoverageError otherwise."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise PlatformCoverageError(
            f"coverage threshold {text!r}: expected a percentage from 0 to 100, e.g. 60"
        ) from None
    if not 0 <= value <= 100 or value != value:  # NaN compares false to everything
        raise PlatformCoverageError(f"coverage threshold {text!r}: must be from 0 to 100")
    return value


def measured_packages(svc: ServiceDecl) -> tuple[str, ...]:
    """The packages measured in `svc`: its declared `coverage`, else the module of `python -m <module>`."""
    if svc.coverage:
        return svc.coverage
    argv = list(svc.command)
    if len(argv) >= 3 and argv[1] == "-m" and _is_python(argv[0]):
        return (argv[2],)
    return ()


def _is_python(program: str) -> bool:
    return program == "{python}" or bool(_PYTHON_NAME.match(Path(program).name))


def interpreter_of(program: str) -> str | None:
    """The Python that runs `program`: itself if it is one, else its shebang's; None if not Python."""
    if _is_python(program):
        return program
    try:
        with open(program, "rb") as handle:
            first = handle.readline(512).decode(errors="replace").strip()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    words = first[2:].split()
    if words and Path(words[0]).name == "env" and len(words) > 1:
        words = [shutil.which(words[1]) or words[1], *words[2:]]
    return words[0] if words and _is_python(words[0]) else None


def wrap_command(argv: list[str], rcfile: Path) -> list[str] | None:
    """`argv` run under coverage.py with `rcfile`; None when it is not a Python program."""
    python = interpreter_of(argv[0])
    if python is None:
        return None
    rest = argv[1:] if python == argv[0] else argv  # a script: coverage runs the file itself
    return [python, "-m", "coverage", "run", "--rcfile", str(rcfile), *rest]


_FIND = (
    "import importlib.util, sys\n"
    "for name in sys.argv[1:]:\n"
    "    spec = importlib.util.find_spec(name)\n"
    "    places = list(spec.submodule_search_locations or []) if spec else []\n"
    "    print(places[0] if places else (spec.origin if spec and spec.origin else ''))\n"
)


def package_folders(python: str, packages: Iterable[str], cwd: Path, env: Mapping[str, str]) -> list[str]:
    """Where the service's interpreter imports `packages` from (folders): coverage.py walks them for
    the files the service never imported. A package not found is kept by name (`source_pkgs`)."""
    names = list(packages)
    try:
        done = subprocess.run(
            [python, "-c", _FIND, *names],
            cwd=cwd,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        found = done.stdout.splitlines() if done.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        found = []
    if len(found) != len(names):
        return names
    return [place or name for place, name in zip(found, names, strict=True)]


def write_rcfile(service_dir: Path, packages: Iterable[str], folders: Iterable[str] = ()) -> Path:
    """The service's coverage.py configuration: branches, one data file per process, saved on SIGTERM."""
    service_dir.mkdir(parents=True, exist_ok=True)
    where = list(folders) or list(packages)  # folders, or names where a folder was not found
    rcfile = service_dir / RC_FILE
    tmp = service_dir / f"{RC_FILE}.{os.getpid()}"  # xdist workers write it at once: never half a file
    tmp.write_text(
        "[run]\n"
        "branch = true\n"
        "parallel = true\n"
        "sigterm = true\n"
        f"data_file = {service_dir / DATA_FILE}\n"
        f"# packages: {', '.join(packages)}\n"  # for the report: paths are shown from the package on
        + f"source = {', '.join(where)}\n"
        # a service that never imports one of its packages still reports it, as never entered
        + "disable_warnings = module-not-imported, no-data-collected, module-not-measured\n"
    )
    tmp.replace(rcfile)
    return rcfile


def has_coverage(python: str) -> bool:
    """True when coverage.py is importable by this interpreter."""
    try:
        done = subprocess.run([python, "-c", "import coverage"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def check_declaration(
    decl: Declaration, render: Mapping[str, str], names: Iterable[str] | None = None
) -> None:
    """PlatformCoverageError (one line) when an app service cannot be measured: coverage.py missing
    from its interpreter. `render` maps {project}/{python}-style globals to values."""
    for name in names if names is not None else decl.names("app"):
        svc = decl.services[name]
        if svc.kind != "app" or not measured_packages(svc):
            continue
        program = svc.command[0]
        for key, value in render.items():
            program = program.replace("{" + key + "}", value)
        python = interpreter_of(program)
        if python is None:
            continue
        if not has_coverage(python):
            raise PlatformCoverageError(
                f"--platform-coverage: coverage.py is not installed in {python} (service {name}); "
                f"install it there (`{python} -m pip install coverage`; a target's bootstrap.sh does)"
            )


# -- the figures -----------------------------------------------------------------------------
def _percent(covered: int, total: int) -> float | None:
    return round(100.0 * covered / total, 2) if total else None


def _display(path: str, packages: Iterable[str]) -> str:
    """`path` from its top-level package on (stack/backend/app.py, open_webui/main.py)."""
    parts = Path(path).parts
    for top in {p.split(".")[0] for p in packages}:
        if top in parts:
            index = len(parts) - 1 - parts[::-1].index(top)
            return "/".join(parts[index:])
    return path


@dataclass
class ServiceData:
    name: str
    folder: Path
    packages: tuple[str, ...]


def services_in(coverage_dir: Path) -> list[ServiceData]:
    """The measured services under `coverage_dir`: one folder each, with its rcfile."""
    found = []
    for folder in sorted(p for p in coverage_dir.iterdir() if p.is_dir()) if coverage_dir.is_dir() else []:
        rcfile = folder / RC_FILE
        if not rcfile.is_file():
            continue
        match = re.search(r"^# packages: (.*)$", rcfile.read_text(), re.M)
        packages = tuple(p.strip() for p in match.group(1).split(",")) if match else ()
        found.append(ServiceData(folder.name, folder, packages))
    return found


def combine(folder: Path, extra: Iterable[Path] = ()) -> Path | None:
    """Combine the service's per-process data files (and `extra` combined files, kept) into one."""
    import coverage

    data_file = folder / DATA_FILE
    parts = sorted(folder.glob(DATA_FILE + ".*"))
    extra = [p for p in extra if p.is_file()]
    if not parts and not extra and not data_file.is_file():
        return None
    cov = coverage.Coverage(data_file=str(data_file), config_file=False, branch=True)
    if data_file.is_file():
        cov.load()
    if parts:
        cov.combine([str(p) for p in parts], keep=False)
    if extra:
        cov.combine([str(p) for p in extra], keep=True)
    cov.save()
    return data_file


def service_figures(data: ServiceData) -> dict[str, Any] | None:
    """Lines and branches covered, per file and in all, of one service's combined data."""
    import coverage

    data_file = combine(data.folder)
    if data_file is None:
        return None
    cov = coverage.Coverage(data_file=str(data_file), config_file=False, branch=True)
    cov.load()
    out = data.folder / "coverage.json"
    try:
        cov.json_report(outfile=str(out), ignore_errors=True)
    except coverage.exceptions.NoDataError:
        return None
    report = json.loads(out.read_text())
    files = []
    never_entered = []
    totals = {"lines_covered": 0, "lines_total": 0, "branches_covered": 0, "branches_total": 0}
    for path, info in sorted(report.get("files", {}).items(), key=lambda kv: _display(kv[0], data.packages)):
        summary = info["summary"]
        shown = _display(path, data.packages)
        lines_total = int(summary["num_statements"])
        lines_covered = int(summary["covered_lines"])
        branches_total = int(summary.get("num_branches", 0))
        branches_covered = int(summary.get("covered_branches", 0))
        totals["lines_covered"] += lines_covered
        totals["lines_total"] += lines_total
        totals["branches_covered"] += branches_covered
        totals["branches_total"] += branches_total
        if lines_total and not lines_covered:
            never_entered.append(shown)
        files.append(
            {
                "path": shown,
                "line_percent": _percent(lines_covered, lines_total) or 0.0,
                "branch_percent": _percent(branches_covered, branches_total),
                "lines_total": lines_total,
                "missing": len(info.get("missing_lines", [])),
            }
        )
    return {
        "line_percent": _percent(totals["lines_covered"], totals["lines_total"]) or 0.0,
        "branch_percent": _percent(totals["branches_covered"], totals["branches_total"]),
        **totals,
        "packages": list(data.packages),
        "files": files,
        "never_entered": never_entered,
    }


def summarize(coverage_dir: Path) -> dict[str, Any] | None:
    """{"services": {name: figures}, "total": {...}} of every service under `coverage_dir`; None if none."""
    services: dict[str, Any] = {}
    for data in services_in(coverage_dir):
        figures = service_figures(data)
        if figures is not None:
            services[data.name] = figures
    if not services:
        return None
    sums = {k: sum(s[k] for s in services.values()) for k in ("lines_covered", "lines_total")}
    branches = {k: sum(s[k] for s in services.values()) for k in ("branches_covered", "branches_total")}
    return {
        "services": services,
        "total": {
            "line_percent": _percent(sums["lines_covered"], sums["lines_total"]) or 0.0,
            "branch_percent": _percent(branches["branches_covered"], branches["branches_total"]),
            **sums,
            **branches,
        },
        "data_dir": str(coverage_dir),
    }


def merge_dirs(coverage_dirs: Iterable[Path], into: Path) -> dict[str, Any] | None:
    """One coverage of many runs' (shards'): each service's combined data files, combined again."""
    by_service: dict[str, list[Path]] = {}
    rcfiles: dict[str, Path] = {}
    for folder in coverage_dirs:
        for data in services_in(folder):
            combined = combine(data.folder) or data.folder / DATA_FILE
            by_service.setdefault(data.name, []).append(combined)
            rcfiles.setdefault(data.name, data.folder / RC_FILE)
    if not by_service:
        return None
    for name, files in by_service.items():
        target = into / name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rcfiles[name], target / RC_FILE)
        (target / DATA_FILE).unlink(missing_ok=True)
        combine(target, files)
    return summarize(into)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def summary_lines(figures: Mapping[str, Any]) -> list[str]:
    """One line per service and one for the total, for the terminal."""
    lines = []
    for name, svc in figures["services"].items():
        lines.append(
            f"{name}: lines {_pct(svc['line_percent'])} ({svc['lines_covered']}/{svc['lines_total']}), "
            f"branches {_pct(svc['branch_percent'])} ({svc['branches_covered']}/{svc['branches_total']}), "
            f"{len(svc['files'])} files, {len(svc['never_entered'])} never entered"
        )
    total = figures["total"]
    lines.append(f"total: lines {_pct(total['line_percent'])}, branches {_pct(total['branch_percent'])}")
    return lines
