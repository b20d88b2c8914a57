"""The chdb engine and its connections, each with the state a ClickHouse session has.

chdb 4.x hosts one engine per process over one data directory, and any number of connections to
it; each connection has its own settings, current database and temporary tables, and queries on
different connections run in parallel.  A :class:`Conn` is one such connection plus what this
server needs to know about it: which settings and database are applied right now, and which of
them belong to the session (``SET`` / ``USE`` statements) rather than to one request (URL
settings, ``database``), so that a request's settings are undone for the next request.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from harness.services.clickhouse_http.errors import NETWORK_ERROR, ClickHouseError

_SET_NAMES_RE = re.compile(rb"(?:\bSET\b|,)\s*`?([A-Za-z_][A-Za-z0-9_]*)`?\s*=", re.IGNORECASE)
_TEMPORARY_RE = re.compile(rb"\A\s*CREATE\s+(?:OR\s+REPLACE\s+)?TEMPORARY\b", re.IGNORECASE)


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


Progress = dict[str, int]


class Stream:
    """A streaming result, one engine block at a time.

    Drives chdb's own connection object: chdb's ``StreamingResult.fetch`` ends the stream at the first
    chunk without rows, which drops what a format writes around the rows (a JSON result's header
    and footer, or all of an empty JSON result).
    """

    def __init__(self, low: Any, handle: Any):
        self._low = low
        self._handle = handle
        self._done = False

    def fetch(self) -> tuple[int, bytes] | None:
        """(rows, bytes) of the next block, or None at the end."""
        if self._done:
            return None
        try:
            result = self._low.streaming_fetch_result(self._handle)
        except Exception as ex:
            self._done = True
            raise ClickHouseError.from_engine(ex) from ex
        if result is None:
            self._done = True
            return None
        rows = int(result.rows_read())
        data = result.bytes() or b""
        if not rows and not data:
            self._done = True
            return None
        return rows, data

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            self._low.streaming_cancel_query(self._handle)


class Conn:
    """One chdb connection and the settings / database applied on it."""

    def __init__(self, raw: Any):
        self.raw = raw
        self.base_database = "default"  # the session's own (USE)
        self.base_settings: dict[str, str] = {}  # the session's own (SET)
        self._database = "default"  # applied right now
        self._applied: dict[str, str] = {}  # settings applied right now, session's and request's
        self.dirty = False  # a sessionless request changed session state: do not reuse
        self._on_progress: Callable[[Progress], None] | None = None
        raw.set_progress_callback(self._progress)

    def _progress(self, progress: Any) -> None:
        callback = self._on_progress
        if callback is not None:
            callback(dict(progress))

    def watch_progress(self, callback: Callable[[Progress], None] | None) -> None:
        self._on_progress = callback

    def q(self, sql: str | bytes, fmt: str = "TabSeparated", params: dict[str, str] | None = None) -> Any:
        if self.raw is None:
            raise ClickHouseError.make(NETWORK_ERROR, "NETWORK_ERROR", "Server is shutting down")
        try:
            return self.raw.query(sql, fmt, params=params or {})
        except Exception as ex:
            raise ClickHouseError.from_engine(ex) from ex

    def stream(self, sql: str | bytes, fmt: str, params: dict[str, str]) -> Stream:
        if self.raw is None:
            raise ClickHouseError.make(NETWORK_ERROR, "NETWORK_ERROR", "Server is shutting down")
        low = self.raw._conn  # chdb's connection object under its Python wrapper (see Stream)
        try:
            return Stream(low, low.send_query(sql, fmt, params=params or {}))
        except Exception as ex:
            raise ClickHouseError.from_engine(ex) from ex

    def prepare(self, database: str | None, settings: dict[str, str]) -> None:
        """Make the connection's settings and database what this request asks for, on top of the session's."""
        want_db = database or self.base_database
        if want_db != self._database:
            self._database = ""
            self.q(f"USE {quote_ident(want_db)}")
            self._database = want_db
        wanted = {**self.base_settings, **settings}
        for name in [n for n in self._applied if n not in wanted]:
            self.q(f"SET {name} = DEFAULT")
            del self._applied[name]
        changes = [(n, v) for n, v in wanted.items() if self._applied.get(n) != v]
        if changes:
            try:
                self.q("SET " + ", ".join(f"{n} = {_quote(v)}" for n, v in changes))
            except ClickHouseError:
                # one of them is bad: apply one at a time so that what is applied is known
                for name, value in changes:
                    self.q(f"SET {name} = {_quote(value)}")
                    self._applied[name] = value
                raise
            self._applied.update(changes)

    def after_statement(self, sql: bytes, keyword: bytes, in_session: bool) -> None:
        """Record what a statement changed in the session (SET, USE, temporary tables)."""
        if keyword == b"USE":
            if not in_session:
                self.dirty = True
                return
            db = self.q("SELECT currentDatabase()").bytes().decode().strip()
            self.base_database = self._database = db
        elif keyword == b"SET":
            if not in_session:
                self.dirty = True
                return
            names = [m.group(1).decode() for m in _SET_NAMES_RE.finditer(sql)]
            if names:
                row = self.q(
                    "SELECT " + ", ".join(f"toString(getSetting({_quote(n)}))" for n in names), "TabSeparated"
                )
                values = row.bytes().decode().rstrip("\n").split("\t")
                for name, value in zip(names, values, strict=False):
                    self.base_settings[name] = value
                    self._applied[name] = value
            else:  # SET ROLE, SET DEFAULT ROLE...: not tracked
                pass
        elif not in_session and (keyword == b"CREATE" and _TEMPORARY_RE.match(sql)):
            self.dirty = True

    def close(self) -> None:
        raw, self.raw = self.raw, None
        if raw is not None:
            try:
                raw.set_progress_callback(None)
            except Exception:  # noqa: S110 - closing anyway
                pass
            raw.close()


class Engine:
    """The process's chdb engine over one data directory."""

    def __init__(self, path: str):
        import chdb

        self.path = path
        self.chdb_version = getattr(chdb, "__version__", "?")
        self._connect = chdb.connect
        self._lock = threading.Lock()
        # An anchor connection keeps the engine up while no request holds one.
        self._anchor = self.connect()
        row = self._anchor.q("SELECT version(), timezone()").bytes().decode()
        self.version, self.timezone = row.rstrip("\n").split("\t")
        self._closed = False

    def connect(self) -> Conn:
        try:
            return Conn(self._connect(self.path))
        except Exception as ex:
            raise ClickHouseError.from_engine(ex) from ex

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._anchor.close()
