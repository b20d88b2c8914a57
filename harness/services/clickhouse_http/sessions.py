"""Sessions (``session_id``) and the connections sessionless requests borrow.

As in ClickHouse's HTTP interface:

* A session is keyed by user and ``session_id`` and holds its own settings (``SET``), current
  database (``USE``) and temporary tables.  Each session has its own chdb connection, so nothing a
  session does is seen by another one or by sessionless requests.
* ``session_timeout`` (seconds, default 60, at most 3600) is the idle time after which the session
  is closed; a bigger value is refused with INVALID_SESSION_TIMEOUT.
* ``session_check=1`` refuses an unknown (or expired) session with SESSION_NOT_FOUND instead of
  creating it.
* One query at a time per session: a second concurrent request gets SESSION_IS_LOCKED at once.
* A sessionless request borrows a pooled connection; its URL settings and ``database`` apply to it
  only and are undone for the next borrower.  A sessionless ``SET``, ``USE`` or ``CREATE TEMPORARY
  TABLE`` makes its connection unusable for others, so that connection is closed afterwards.

Where this differs from ClickHouse: session state lives in a chdb connection, so a session's
settings are those of that connection (ClickHouse copies the session context per query); URL
settings of a session request are undone after the request by re-applying the session's own
values, which this server learns by reading back the settings named in ``SET`` statements.  An
expired session is closed when the next session request arrives (ClickHouse has a background thread).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from harness.services.clickhouse_http.engine import Conn, Engine
from harness.services.clickhouse_http.errors import (
    INVALID_SESSION_TIMEOUT,
    SESSION_IS_LOCKED,
    SESSION_NOT_FOUND,
    ClickHouseError,
)

DEFAULT_SESSION_TIMEOUT = 60.0
MAX_SESSION_TIMEOUT = 3600.0
POOL_KEEP = 16  # idle sessionless connections kept open


class Session:
    def __init__(self, key: tuple[str, str], conn: Conn, timeout: float):
        self.key = key
        self.conn = conn
        self.timeout = timeout
        self.lock = threading.Lock()
        self.expires = time.monotonic() + timeout


class Sessions:
    """Every open session, and the pool of sessionless connections."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._lock = threading.Lock()
        self._sessions: dict[tuple[str, str], Session] = {}
        self._idle: list[Conn] = []
        self._closed = False

    def _sweep(self, now: float) -> list[Conn]:
        """Drop expired idle sessions (lock held); returns their connections to close outside the lock."""
        expired = [s for s in self._sessions.values() if s.expires < now and not s.lock.locked()]
        for s in expired:
            del self._sessions[s.key]
        return [s.conn for s in expired]

    @contextmanager
    def session(self, user: str, session_id: str, timeout: str | None, check: bool) -> Iterator[Conn]:
        """Hold the session for one request: SESSION_IS_LOCKED if another request holds it."""
        seconds = DEFAULT_SESSION_TIMEOUT
        if timeout not in (None, ""):
            try:
                seconds = float(timeout)  # type: ignore[arg-type]
            except ValueError:
                raise ClickHouseError.make(
                    INVALID_SESSION_TIMEOUT,
                    "INVALID_SESSION_TIMEOUT",
                    f"Invalid session timeout: '{timeout}'",
                ) from None
            if seconds > MAX_SESSION_TIMEOUT:
                raise ClickHouseError.make(
                    INVALID_SESSION_TIMEOUT,
                    "INVALID_SESSION_TIMEOUT",
                    f"Session timeout '{timeout}' is larger than max_session_timeout: {MAX_SESSION_TIMEOUT:.0f}. "
                    "Maximum session timeout could be modified in configuration file",
                )
        key = (user, session_id)
        now = time.monotonic()
        with self._lock:
            to_close = self._sweep(now)
            session = self._sessions.get(key)
            if session is None and check:
                raise ClickHouseError.make(
                    SESSION_NOT_FOUND, "SESSION_NOT_FOUND", f"Session {session_id} not found"
                )
            created = session is None
            if session is None:
                session = Session(key, self.engine.connect(), seconds)
                self._sessions[key] = session
            if not session.lock.acquire(blocking=False):
                raise ClickHouseError.make(
                    SESSION_IS_LOCKED,
                    "SESSION_IS_LOCKED",
                    f"Session {session_id} is locked by a concurrent client",
                )
        for conn in to_close:
            conn.close()
        try:
            if not created:
                session.timeout = seconds
            yield session.conn
        finally:
            session.expires = time.monotonic() + session.timeout
            session.lock.release()

    @contextmanager
    def sessionless(self) -> Iterator[Conn]:
        """Borrow a connection for one sessionless request."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self.engine.connect()
        try:
            yield conn
        finally:
            keep = False
            if not conn.dirty and conn.raw is not None:
                with self._lock:
                    if not self._closed and len(self._idle) < POOL_KEEP:
                        self._idle.append(conn)
                        keep = True
            if not keep:
                conn.close()

    def open_sessions(self) -> int:
        with self._lock:
            return len(self._sessions)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = [s.conn for s in self._sessions.values()] + self._idle
            self._sessions.clear()
            self._idle = []
        for conn in conns:
            conn.close()
