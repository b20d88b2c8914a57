"""Journey steps: named, timed, nestable; the failing one is named loudly.

    async with step("Sign up through the UI"):
        ...

`step` works with `with` too. Each test gets a fresh `StepLog` (installed by the browser
plugin); the report shows it with timings, and a failing step adds a note to the exception:
"step 3/5 'Log in' failed after 2.1 s: TimeoutError: ...".

A step the target cannot do is recorded without running anything:

    if not app.supports("refresh_token"):
        step.not_applicable("Refresh rotates the tokens", "lacks refresh_token")
    else:
        async with step("Refresh rotates the tokens"):
            ...

and a `NotApplicable` raised inside a step marks that step "not applicable", not "failed".
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from harness.capabilities import NotApplicable
from harness.redact import redact

StepStatus = Literal["running", "passed", "failed", "not applicable"]

_NOTE_MARK = "__throughline_step_noted__"


@dataclass
class StepRecord:
    """One step as it ran: where it sits, how long it took, how it ended."""

    name: str
    number: str  # "3" for a top-level step, "3.2" for its second sub-step
    path: tuple[str, ...]
    depth: int
    started: float
    duration: float | None = None
    status: StepStatus = "running"
    error: str | None = None
    reason: str | None = None  # why a step is not applicable
    _children: int = field(default=0, repr=False)

    @property
    def title(self) -> str:
        return " › ".join(repr(p) for p in self.path)

    @property
    def note(self) -> str | None:
        """What to show beside the step: its error, or why it is not applicable."""
        if self.error:
            return self.error
        if self.reason:
            return (
                self.reason if self.reason.startswith("not applicable") else f"not applicable: {self.reason}"
            )
        return None


@dataclass
class StepLog:
    """The steps of one test, in the order they started."""

    expected_total: int | None = None
    records: list[StepRecord] = field(default_factory=list)
    _top_level: int = 0

    def failed_step(self) -> StepRecord | None:
        """The innermost failed step (where the failure happened), if any."""
        failed = [r for r in self.records if r.status == "failed"]
        return max(failed, key=lambda r: r.depth) if failed else None

    def label(self, record: StepRecord) -> str:
        top = record.number.split(".")[0]
        total = self.expected_total
        counter = f"{top}/{total}" if total and int(top) <= total else top
        sub = f" (sub-step {record.number})" if record.depth else ""
        return f"step {counter} {record.title}{sub}"

    def format(self) -> str:
        """Plain-text table: number, status, duration, name (indented by depth)."""
        lines = []
        for r in self.records:
            took = f"{r.duration:6.2f} s" if r.duration is not None else "   ... "
            mark = {"passed": "ok  ", "failed": "FAIL", "running": "... ", "not applicable": "n/a "}[r.status]
            line = f"{r.number:>6} {mark} {took}  {'  ' * r.depth}{r.name}"
            if r.note:
                line += f"  -> {r.note}"
            lines.append(line)
        return redact("\n".join(lines))


_current_log: StepLog | None = None
_parent: ContextVar[StepRecord | None] = ContextVar("throughline_step_parent", default=None)


def start_step_log(expected_total: int | None = None) -> StepLog:
    """Install a fresh step log for the test about to run (called by the plugin)."""
    global _current_log
    _current_log = StepLog(expected_total=expected_total)
    return _current_log


def current_step_log() -> StepLog:
    """The running test's step log (a detached one outside pytest)."""
    global _current_log
    if _current_log is None:
        _current_log = StepLog()
    return _current_log


def count_steps(func: Any) -> int | None:
    """Statically count the top-level `with step(...)` blocks of a test function (None if unknown)."""
    try:
        source = textwrap.dedent(inspect.getsource(func))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return None

    def is_step(node: ast.AST) -> bool:
        if not isinstance(node, ast.With | ast.AsyncWith):
            return False
        for item in node.items:
            call = item.context_expr
            if isinstance(call, ast.Call):
                fn = call.func
                name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
                if name == "step":
                    return True
        return False

    count = 0

    def walk(node: ast.AST) -> None:
        nonlocal count
        for child in ast.iter_child_nodes(node):
            if is_step(child):
                count += 1  # sub-steps inside it are not top-level
            else:
                walk(child)

    walk(tree)
    return count or None


class step:  # noqa: N801 - used like a keyword: `async with step("Log in"):`
    """A named, timed journey step; nestable; works with `with` and `async with`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.record: StepRecord | None = None
        self._token: Any = None

    @staticmethod
    def _new_record(name: str) -> StepRecord:
        log = current_step_log()
        parent = _parent.get()
        if parent is None:
            log._top_level += 1
            number, path, depth = str(log._top_level), tuple[str, ...]((name,)), 0
        else:
            parent._children += 1
            number = f"{parent.number}.{parent._children}"
            path, depth = (*parent.path, name), parent.depth + 1
        record = StepRecord(name, number, path, depth, started=time.monotonic())
        log.records.append(record)
        return record

    @staticmethod
    def not_applicable(name: str, reason: str) -> StepRecord:
        """Record step `name` as "not applicable" (e.g. "lacks refresh_token") without running anything."""
        record = step._new_record(name)
        record.duration = 0.0
        record.status = "not applicable"
        record.reason = redact(reason)
        return record

    def _enter(self) -> StepRecord:
        record = self._new_record(self.name)
        self.record = record
        self._token = _parent.set(record)
        return record

    def _exit(self, exc: BaseException | None) -> None:
        __tracebackhide__ = True
        record = self.record
        assert record is not None
        _parent.reset(self._token)
        record.duration = time.monotonic() - record.started
        if exc is None:
            record.status = "passed"
            return
        if isinstance(exc, NotApplicable):
            # The target cannot do this step: the test ends "not applicable", the step did not fail.
            record.status = "not applicable"
            record.reason = redact(exc.reason)
            return
        record.status = "failed"
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        record.error = redact(f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__)
        if not getattr(exc, _NOTE_MARK, False):
            # Only the innermost step names itself; outer steps just record that they failed.
            try:
                setattr(exc, _NOTE_MARK, True)
            except AttributeError:
                pass
            note = f"{current_step_log().label(record)} failed after {record.duration:.1f} s: {record.error}"
            exc.add_note(note)

    def __enter__(self) -> StepRecord:
        return self._enter()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._exit(exc)

    async def __aenter__(self) -> StepRecord:
        return self._enter()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._exit(exc)
