"""Defect drills: single, realistic defects a target keeps against its own platform code.

    targets/<name>/drills.toml
        source = "stack"            # the platform's code: a folder of the project (copied whole), or
        # package = "open_webui"    # an installed package (copied whole, put first on the import path)
        # python = ".venv-targets/open-webui/bin/python"  # package mode: the interpreter it is installed
        #                           # for (project-relative; default: the one running Throughline)
        # link = ["open_webui/frontend"]  # package mode: big read-only folders the copy links to, not copies
        controls = ["journeys/test_x.py::test_y", ...]   # run first under every drill they do not declare

        [[drill]]
        name = "ws-accepts-revoked-session"              # lower-case, digits, '-'; unique over all targets
        breaks = "after a logout the old access token still opens the chat socket"
        file = "stack/backend/auth.py"                   # relative to the copy's root (starts with source)
        find = '''..exact text, once in the file..'''
        replace = '''..the defect..'''

A drill is a find/replace, not a diff: it names the one place it breaks, reads in review as the
defect itself, and survives unrelated edits of the file. The text to find must occur exactly once;
when the platform changed under it, applying fails with one line naming the drill and the file.

Journeys declare the drills they must catch (`@journey(..., drills=[...])`); `throughline prove`
(harness/prove.py) applies each to a scratch copy and runs the journeys that declare it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.rundirs import make_run_dir, remove_run_dir
from harness.target import declared_name

PROJECT = Path(__file__).resolve().parent.parent
DRILLS_FILE = "drills.toml"
SOURCE_ROOT_ENV = "THROUGHLINE_SOURCE_ROOT"  # where the stack imports the platform's code from
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_TOP_FIELDS = ("source", "package", "python", "link", "controls", "drill")
_DRILL_FIELDS = ("name", "breaks", "file", "find", "replace")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache", "node_modules")
_IGNORE_PACKAGE = shutil.ignore_patterns(".pytest_cache", ".mypy_cache")


class DrillError(ValueError):
    """A drills.toml that cannot be used, or a drill that no longer applies; one line."""


@dataclass(frozen=True)
class Drill:
    """One defect: where it goes (file, find) and what it becomes (replace)."""

    name: str
    breaks: str  # what a user of the platform would see go wrong
    file: str  # relative to the copy's root, e.g. stack/backend/auth.py
    find: str
    replace: str


@dataclass(frozen=True)
class DrillSet:
    """A target's validated drills.toml."""

    path: Path
    source: str | None  # a folder of the project, e.g. "stack"
    package: str | None  # an installed package, e.g. "open_webui"
    controls: tuple[str, ...]
    drills: tuple[Drill, ...]
    python: str | None = None  # package mode: the interpreter the package is installed for
    link: tuple[str, ...] = ()  # package mode: folders of the copy that link to the original

    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.drills)

    def get(self, name: str) -> Drill:
        for drill in self.drills:
            if drill.name == name:
                return drill
        raise DrillError(f"{self.path}: no drill '{name}' (drills: {', '.join(self.names()) or 'none'})")

    @property
    def top(self) -> str:
        """The folder the copy holds, named as the drills' `file` paths start: "stack", "open_webui"."""
        return self.source if self.source is not None else str(self.package)

    def original_root(self) -> Path:
        """The folder holding the original code's top folder (the project, or the package's parent)."""
        if self.source is not None:
            return PROJECT
        if self.python is not None:
            return _installed_root(self, self.python)
        try:
            spec = importlib.util.find_spec(str(self.package))
        except (ImportError, ValueError) as exc:
            raise DrillError(f"{self.path}: package '{self.package}' cannot be found: {exc}") from None
        if spec is None or not spec.submodule_search_locations:
            raise DrillError(f"{self.path}: package '{self.package}' is not installed (or not a package)")
        return Path(next(iter(spec.submodule_search_locations))).resolve().parent

    def error(self, drill: Drill, problem: str) -> DrillError:
        return DrillError(f"{self.path}: drill '{drill.name}': {drill.file}: {problem}")


_FIND_PACKAGE = (
    "import importlib.util, sys; s = importlib.util.find_spec(sys.argv[1]); "
    "print(next(iter(s.submodule_search_locations)) if s and s.submodule_search_locations else '')"
)


def _installed_root(drills: DrillSet, python: str) -> Path:
    """The folder holding `drills.package` as installed for `python` (never a drill's copy)."""
    exe = Path(python) if Path(python).is_absolute() else PROJECT / python
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", SOURCE_ROOT_ENV)}
    try:
        out = subprocess.run(
            [str(exe), "-I", "-c", _FIND_PACKAGE, str(drills.package)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
    except OSError as exc:
        raise DrillError(f"{drills.path}: field 'python' names {exe}, which does not run: {exc}") from None
    found = out.stdout.strip()
    if out.returncode != 0 or not found:
        raise DrillError(f"{drills.path}: package '{drills.package}' is not installed for {exe}")
    return Path(found).resolve().parent


def drills_file(target_folder: Path) -> Path:
    return target_folder / DRILLS_FILE


def load_drills(path: Path) -> DrillSet:
    """Read and validate a drills.toml; DrillError (one line naming the file and the field) on any mistake."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise DrillError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise DrillError(f"{path}: not valid TOML: {exc}") from None
    unknown = [k for k in data if k not in _TOP_FIELDS]
    if unknown:
        raise DrillError(f"{path}: unknown field(s) {unknown}; expected {', '.join(_TOP_FIELDS)}")
    source, package = data.get("source"), data.get("package")
    if (source is None) == (package is None):
        raise DrillError(
            f"{path}: name the platform's code with 'source' (a folder of the project) or 'package' "
            "(an installed package), exactly one of them"
        )
    for field, value in (("source", source), ("package", package)):
        if value is not None and (not isinstance(value, str) or not re.match(r"^[A-Za-z_][\w.-]*$", value)):
            raise DrillError(f"{path}: field '{field}' must be a folder or package name, got {value!r}")
    if source is not None and not (PROJECT / source).is_dir():
        raise DrillError(f"{path}: field 'source' names {PROJECT / source}, which is not a folder")
    controls = data.get("controls", [])
    if not isinstance(controls, list) or not all(isinstance(c, str) and "::" in c for c in controls):
        raise DrillError(
            f"{path}: field 'controls' must be a list of test ids like journeys/test_x.py::test_y"
        )
    python, link = data.get("python"), data.get("link", [])
    if python is not None and (package is None or not isinstance(python, str) or not python):
        raise DrillError(f"{path}: field 'python' (an interpreter path) goes with 'package' only")
    if not isinstance(link, list) or not all(isinstance(x, str) and x for x in link):
        raise DrillError(f"{path}: field 'link' must be a list of folders like open_webui/frontend")
    if link and package is None:
        raise DrillError(f"{path}: field 'link' goes with 'package' only (a source folder is copied whole)")
    entries = data.get("drill", [])
    if not isinstance(entries, list) or not entries:
        raise DrillError(f"{path}: declares no drill (write [[drill]] tables)")
    top = source if source is not None else str(package)
    drills: list[Drill] = []
    for i, entry in enumerate(entries, 1):
        where = f"{path}: drill {i}"
        if not isinstance(entry, dict):
            raise DrillError(f"{where}: each [[drill]] must be a table")
        name = entry.get("name")
        if isinstance(name, str) and name:
            where = f"{path}: drill '{name}'"
        extra = [k for k in entry if k not in _DRILL_FIELDS]
        if extra:
            raise DrillError(f"{where}: unknown field(s) {extra}; expected {', '.join(_DRILL_FIELDS)}")
        for field in _DRILL_FIELDS:
            value = entry.get(field)
            if not isinstance(value, str) or (field != "replace" and not value.strip()):
                raise DrillError(f"{where}: field '{field}' must be a non-empty string, got {value!r}")
        drill = Drill(**{f: entry[f] for f in _DRILL_FIELDS})
        if not _NAME.match(drill.name):
            raise DrillError(f"{where}: a drill name is lower-case letters, digits and '-'")
        if any(d.name == drill.name for d in drills):
            raise DrillError(f"{where}: declared twice")
        if "\n" in drill.breaks.strip():
            raise DrillError(f"{where}: field 'breaks' is one line saying what breaks for a user")
        parts = Path(drill.file).parts
        if Path(drill.file).is_absolute() or ".." in parts or parts[:1] != (top,):
            raise DrillError(f"{where}: field 'file' must be a path inside '{top}/', got {drill.file!r}")
        if any(drill.file == x or drill.file.startswith(x.rstrip("/") + "/") for x in link):
            raise DrillError(
                f"{where}: field 'file' is inside a linked folder ({drill.file}); drill the copy"
            )
        if drill.find == drill.replace:
            raise DrillError(f"{where}: 'replace' equals 'find': the drill changes nothing")
        drills.append(drill)
    return DrillSet(
        path=path,
        source=source,
        package=package,
        controls=tuple(controls),
        drills=tuple(drills),
        python=python,
        link=tuple(link),
    )


def load_target_drills(target_folder: Path) -> DrillSet | None:
    """The target's drills (None when it keeps no drills.toml)."""
    path = drills_file(target_folder)
    return load_drills(path) if path.is_file() else None


def drill_owners(folders: list[Path]) -> dict[str, str]:
    """Every drill name of these target folders -> the target declaring it; a name of two targets is an error.

    Keyed by the target's declared name: a copy of a target folder (another version, a test's copy)
    may repeat its drills."""
    owners: dict[str, str] = {}
    for folder in folders:
        drills = load_target_drills(folder)
        target = declared_name(folder)
        for name in drills.names() if drills else ():
            if name in owners and owners[name] != target:
                raise DrillError(
                    f"{drills_file(folder)}: drill '{name}' is also a drill of target '{owners[name]}'; "
                    "drill names are unique over all targets"
                )
            owners[name] = target
    return owners


# -- applying ---------------------------------------------------------------------------------
def patched_text(drills: DrillSet, drill: Drill, root: Path) -> str:
    """The drilled file's new text (nothing written); DrillError when the drill no longer applies."""
    target = root / drill.file
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise drills.error(drill, "no such file in the platform's code (moved or renamed?)") from None
    count = text.count(drill.find)
    if count == 0:
        raise drills.error(
            drill, "the text to find no longer occurs (the platform changed under the drill: update 'find')"
        )
    if count > 1:
        raise drills.error(drill, f"the text to find occurs {count} times; make 'find' unique")
    new = text.replace(drill.find, drill.replace, 1)
    if target.suffix == ".py":
        try:
            compile(new, str(target), "exec")
        except SyntaxError as exc:
            raise drills.error(
                drill, f"the drilled file is not valid Python (line {exc.lineno}: {exc.msg})"
            ) from None
    return new


def check_applies(drills: DrillSet, drill: Drill) -> None:
    """DrillError unless the drill applies to the original code (read only)."""
    patched_text(drills, drill, drills.original_root())


def apply_drill(drills: DrillSet, drill: Drill, root: Path) -> None:
    """Patch the copy under `root` with the drill."""
    new = patched_text(drills, drill, root)
    (root / drill.file).write_text(new, encoding="utf-8")


@contextmanager
def scratch_copy(drills: DrillSet, drill: Drill | None = None, parent: Path | None = None) -> Iterator[Path]:
    """A throw-away copy of the platform's code (with `drill` applied); yields the copy's root."""
    top = drills.original_root() / drills.top
    root = make_run_dir(prefix="throughline-drill-", parent=parent)
    linked = {(drills.original_root() / x).resolve() for x in drills.link}

    def ignore(folder: str, names: list[str]) -> set[str]:
        # An installed package keeps its bytecode: it is checked against each source's mtime
        # (copied too), so only the drilled file recompiles and the copy starts as fast.
        skipped = (
            set(_IGNORE(folder, names)) if drills.package is None else set(_IGNORE_PACKAGE(folder, names))
        )
        return skipped | {n for n in names if (Path(folder) / n).resolve() in linked}

    try:
        shutil.copytree(top, root / drills.top, ignore=ignore, symlinks=True)
        for entry in drills.link:
            if not (drills.original_root() / entry).is_dir():
                raise DrillError(
                    f"{drills.path}: field 'link' names {entry}, which is no folder of the package"
                )
            (root / entry).symlink_to(drills.original_root() / entry, target_is_directory=True)
        if drill is not None:
            apply_drill(drills, drill, root)
        yield root
    finally:
        remove_run_dir(root)


def source_root_env(root: Path) -> dict[str, str]:
    """The environment that makes a stack run the platform's code from `root` (harness/stack.py)."""
    return {SOURCE_ROOT_ENV: str(root)}


__all__ = [
    "DRILLS_FILE",
    "SOURCE_ROOT_ENV",
    "Drill",
    "DrillError",
    "DrillSet",
    "apply_drill",
    "check_applies",
    "drill_owners",
    "drills_file",
    "load_drills",
    "load_target_drills",
    "patched_text",
    "scratch_copy",
    "source_root_env",
]
