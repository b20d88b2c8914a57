"""Targets: everything specific to one platform, in one folder.

    targets/<name>/
        target.toml     name, version, the app adapter, capabilities, (services file or external URLs)
        services.toml   the platform's services, declared (harness/declaration.py)
        defects.toml    defects the journeys found in it: applied as strict xfails
        app.py, pages/, protocol.py, records.py   the adapters journeys talk through

`load_target("reference")` reads and validates it; every mistake is one line naming the file
and the field. Targets are looked up in THROUGHLINE_TARGETS_PATH (os.pathsep-separated
folders), then in the project's `targets/`; a path to a folder works as a name too.
"""

from __future__ import annotations

import importlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.capabilities import CAPABILITIES, UnknownCapabilityError, check_capabilities

PROJECT_TARGETS = Path(__file__).resolve().parent.parent / "targets"
DEFAULT_TARGET = "reference"


class TargetError(ValueError):
    """A target that cannot be found or whose files are wrong; the message is one line."""


@dataclass(frozen=True)
class Defect:
    """A defect a journey found in the target: shown as a strict xfail until the platform fixes it."""

    id: str
    summary: str
    evidence: str
    test: str  # a node id relative to the project, e.g. journeys/test_real_x.py::test_y[case]
    step: str | None = None  # the step that fails while the defect stands (None: any)

    def reason(self) -> str:
        return f"known defect {self.id}: {self.summary}"


@dataclass(frozen=True)
class Target:
    """One platform under test."""

    name: str
    version: str
    description: str
    folder: Path
    app: str  # "module:Class" of its App adapter
    capabilities: frozenset[str]
    defects: tuple[Defect, ...] = ()
    services_file: Path | None = None  # None: external, nothing is started
    external_urls: dict[str, str] = field(default_factory=dict)  # url key -> environment variable
    knobs: dict[str, str] = field(default_factory=dict)
    seed: str | None = None  # "module:function" called with the started Stack (admin account, settings)

    @property
    def is_external(self) -> bool:
        return self.services_file is None

    @property
    def title(self) -> str:
        return f"{self.name} {self.version}".strip()

    def has(self, capability: str) -> bool:
        if capability not in CAPABILITIES:
            raise UnknownCapabilityError(
                f"unknown capability {capability!r}; known: {', '.join(CAPABILITIES)}"
            )
        return capability in self.capabilities

    def lacking(self, needed: tuple[str, ...] | list[str]) -> list[str]:
        return [c for c in needed if c not in self.capabilities]

    def seed_function(self) -> Any:
        """The target's seed hook (None when it has none)."""
        if self.seed is None:
            return None
        module_name, _, attr = self.seed.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise TargetError(
                f"{self.folder / 'target.toml'}: seed = {self.seed!r} cannot be loaded: {exc}"
            ) from exc

    def app_class(self) -> type:
        module_name, _, attr = self.app.partition(":")
        try:
            module = importlib.import_module(module_name)
            return getattr(module, attr)  # type: ignore[no-any-return]
        except (ImportError, AttributeError) as exc:
            raise TargetError(
                f"{self.folder / 'target.toml'}: app = {self.app!r} cannot be loaded: {exc}"
            ) from exc


def search_path() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("THROUGHLINE_TARGETS_PATH", "").split(os.pathsep) if p]
    return [*extra, PROJECT_TARGETS]


def declared_name(folder: Path) -> str:
    """The `name` a target.toml declares (its folder's name when it declares none or cannot be read)."""
    try:
        with open(folder / "target.toml", "rb") as fh:
            name = tomllib.load(fh).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        return folder.name
    return name if isinstance(name, str) and name else folder.name


def _target_folders() -> list[Path]:
    folders: list[Path] = []
    for base in search_path():
        if base.is_dir():
            folders += [p for p in sorted(base.iterdir()) if (p / "target.toml").is_file()]
    return folders


def target_folders() -> list[Path]:
    """Every target folder on the search path (THROUGHLINE_TARGETS_PATH, then the project's targets/)."""
    return _target_folders()


def known_targets() -> list[str]:
    return sorted(dict.fromkeys(declared_name(folder) for folder in _target_folders()))


def find_target_folder(name: str) -> Path:
    """A target folder by path, folder name or declared name ("open-webui" lives in targets/open_webui)."""
    as_path = Path(name)
    if (as_path / "target.toml").is_file():
        return as_path.resolve()
    for folder in _target_folders():
        if name in (folder.name, declared_name(folder)):
            return folder.resolve()
    raise TargetError(f"unknown target {name!r}; known targets: {', '.join(known_targets()) or '(none)'}")


def selected_target_name(option: str | None = None) -> str:
    """--target, else THROUGHLINE_TARGET, else the reference platform."""
    return option or os.environ.get("THROUGHLINE_TARGET") or DEFAULT_TARGET


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise TargetError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path}: not valid TOML: {exc}") from None


def _str(data: dict[str, Any], key: str, path: Path, *, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or (default is None and not value.strip()):
        raise TargetError(f"{path}: field '{key}' must be a non-empty string, got {value!r}")
    return value


def load_defects(path: Path, known_tests: set[str] | None = None) -> tuple[Defect, ...]:
    if not path.is_file():
        return ()
    data = _read_toml(path)
    entries = data.get("defect", [])
    if not isinstance(entries, list):
        raise TargetError(f"{path}: 'defect' must be an array of tables ([[defect]])")
    defects: list[Defect] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = path.with_name(f"{path.name}[defect {i + 1}]")
        if not isinstance(entry, dict):
            raise TargetError(f"{where}: each [[defect]] must be a table")
        unknown = set(entry) - {"id", "summary", "evidence", "test", "step"}
        if unknown:
            raise TargetError(
                f"{where}: unknown field(s) {sorted(unknown)}; expected id, summary, evidence, test, step"
            )
        defect = Defect(
            id=_str(entry, "id", where),
            summary=_str(entry, "summary", where),
            evidence=_str(entry, "evidence", where),
            test=_str(entry, "test", where),
            step=entry.get("step"),
        )
        if defect.id in seen:
            raise TargetError(f"{where}: defect id {defect.id!r} is registered twice")
        seen.add(defect.id)
        if "::" not in defect.test:
            raise TargetError(
                f"{where}: field 'test' must be a node id like journeys/test_x.py::test_y, got {defect.test!r}"
            )
        defects.append(defect)
    return tuple(defects)


def load_target(name: str | None = None) -> Target:
    """The target called `name` (or at that path), validated."""
    folder = find_target_folder(selected_target_name(name))
    path = folder / "target.toml"
    data = _read_toml(path)
    base: Target | None = None
    if "extends" in data:
        parent = _str(data, "extends", path)
        if parent == folder.name:
            raise TargetError(f"{path}: field 'extends' names the target itself")
        base = load_target(parent)
    known = {
        "name",
        "version",
        "description",
        "app",
        "capabilities",
        "services",
        "extends",
        "external",
        "knobs",
        "seed",
    }
    unknown = set(data) - known
    if unknown:
        raise TargetError(f"{path}: unknown field(s) {sorted(unknown)}; expected {', '.join(sorted(known))}")
    try:
        caps_raw = data.get("capabilities", sorted(base.capabilities) if base else None)
        if not isinstance(caps_raw, list) or not all(isinstance(c, str) for c in caps_raw):
            raise TargetError(f"{path}: field 'capabilities' must be a list of capability names")
        capabilities = check_capabilities(caps_raw, f"{path}: field 'capabilities'")
    except UnknownCapabilityError as exc:
        raise TargetError(str(exc)) from None
    services_file: Path | None = None
    if "services" in data:
        services_file = folder / _str(data, "services", path)
        if not services_file.is_file():
            raise TargetError(f"{path}: field 'services' names {services_file}, which does not exist")
    external = data.get("external", {})
    if external and services_file is not None:
        raise TargetError(
            f"{path}: a target has either 'services' (started here) or 'external' (already running), not both"
        )
    if not isinstance(external, dict) or not all(isinstance(v, str) for v in external.values()):
        raise TargetError(f"{path}: field 'external' must map URL names to environment variable names")
    if services_file is None and not external:
        raise TargetError(
            f"{path}: a target needs 'services' (a declaration file) or an 'external' table of URLs"
        )
    knobs = data.get("knobs", dict(base.knobs) if base else {})
    if not isinstance(knobs, dict) or not all(isinstance(v, str | int | float) for v in knobs.values()):
        raise TargetError(f"{path}: field 'knobs' must map names to values")
    return Target(
        name=data.get("name", folder.name),
        version=str(data.get("version", base.version if base else "")),
        description=str(data.get("description", base.description if base else "")),
        folder=folder,
        app=data["app"] if "app" in data else (base.app if base else _str(data, "app", path)),
        capabilities=frozenset(capabilities),
        defects=load_defects(folder / "defects.toml"),
        services_file=services_file,
        external_urls=dict(external),
        knobs={k: str(v) for k, v in knobs.items()},
        seed=_str(data, "seed", path) if "seed" in data else None,
    )
