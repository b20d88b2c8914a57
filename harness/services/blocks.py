"""What a building block is: one kind of service a services.toml can `use` by name.

A block knows how to run its service on a given port inside the run directory, which address
it has, which extra names it offers to templates (`{postgres.db.auth}`), which options it takes,
whether it is a real store or a stand-in for a third party, and what it needs installed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from harness.process import ProcessSpec, ReadyCheck

Check = tuple[str, bool, str]  # (what, ok, detail or how to fix)
Kind = Literal["store", "stand-in"]


class OptionError(ValueError):
    """A block option is wrong; the declaration adds the file and the service to the message."""

    def __init__(self, option: str, problem: str) -> None:
        self.option = option
        self.problem = problem
        super().__init__(f"{option}: {problem}")


@dataclass(frozen=True)
class BlockRun:
    """One declared service of a block in one run: its name, ports, options and run directory."""

    service: str
    run_dir: Path
    port: int
    ports: Mapping[str, int]  # the block's extra ports by name
    options: Mapping[str, Any]  # as check_options returned them
    project: Path

    def data_dir(self, usual: str, block: str) -> Path:
        """The block's usual folder when the service has the block's name, else one named after the service."""
        return self.run_dir / (usual if self.service == block else self.service)


class Block:
    """A building block; subclasses set the class attributes and implement spec() and url()."""

    name: ClassVar[str]
    kind: ClassVar[Kind]
    third_party: ClassVar[str] = ""  # what a stand-in stands in for, shown in the report
    options: ClassVar[tuple[str, ...]] = ()  # extra fields the block accepts in its [services.x] table
    extra_ports: ClassVar[tuple[str, ...]] = ()  # named ports besides the main one: {x.ports.<name>}
    ready_kinds: ClassVar[frozenset[str]] = frozenset({"http", "tcp", "log"})  # allowed `ready` overrides
    default_timeout: ClassVar[float] = 20.0

    @property
    def gets_platform_env(self) -> bool:
        """Stand-ins read the platform's [env] (keys, client ids) like the apps; stores do not."""
        return self.kind == "stand-in"

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The options, validated and with defaults filled in; OptionError otherwise."""
        return options

    def names(self, options: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
        """Extra template names by group, e.g. {"db": ("auth", "backend")} for {postgres.db.auth}."""
        return {}

    def name_value(self, run: BlockRun, group: str, name: str) -> str:
        """The value of {<service>.<group>.<name>}."""
        raise KeyError(f"{group}.{name}")

    def url(self, run: BlockRun) -> str:
        """The service's address: {<service>.url}."""
        raise NotImplementedError

    def replaced_by(self) -> str | None:
        """A URL of an existing server that replaces this block everywhere (nothing is started), or None."""
        return None

    def spec(self, run: BlockRun) -> ProcessSpec:
        """What to run; called just before the service starts (may prepare its data directory)."""
        raise NotImplementedError

    def query_ready(self, run: BlockRun, sql: str) -> ReadyCheck:
        """A readiness check that runs `sql` (only for blocks whose ready_kinds include 'query')."""
        raise NotImplementedError

    def doctor(self) -> list[Check]:
        """What this block needs installed, each (what, ok, detail or fix)."""
        return []


def python_module_checks(modules: Mapping[str, str]) -> list[Check]:
    """Doctor checks that Python modules ({module: pip package}) can be imported."""
    checks: list[Check] = []
    for module, package in modules.items():
        found = importlib.util.find_spec(module) is not None
        checks.append((f"python: {module}", found, "installed" if found else f"pip install {package}"))
    return checks
