"""One statement run on a connection in a worker thread, its output handed to the HTTP thread in blocks.

The HTTP thread stays free to send progress headers and to notice a client that went away while
the engine works.  Results of statements that have one (SELECT, SHOW, DESCRIBE, ...) stream block
by block from the engine (``send_query``); other statements run to completion.  The queue between
the two threads is bounded, so a slow client slows the query down instead of filling memory.

Counters are the engine's own progress (rows and bytes read and written), not the result's size;
``result_rows`` / ``result_bytes`` count what was sent.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from harness.services.clickhouse_http.engine import Conn, Progress, Stream, quote_ident
from harness.services.clickhouse_http.errors import ClickHouseError
from harness.services.clickhouse_http.native import NativeRewriter
from harness.services.clickhouse_http.request import Request, first_keyword, is_result_statement

_FORMAT_TAIL_RE = re.compile(rb"\s+FORMAT\s+[A-Za-z_][A-Za-z0-9_]*\s*;?\s*$", re.IGNORECASE)

DATA, END, ERROR = "data", "end", "error"

# Engine calls run on pooled threads: starting a thread per request costs more than a short query.
_WORKERS = ThreadPoolExecutor(max_workers=64, thread_name_prefix="ch-query")


class Execution:
    """Runs the request's statement.

    :attr:`events` yields (DATA, bytes) ..., then (END, (bytes | None, None)) or (ERROR, (bytes | None,
    error)): the last event may carry the last block.
    """

    def __init__(self, conn: Conn, req: Request, *, in_session: bool, revision: int):
        self.conn = conn
        self.req = req
        self.in_session = in_session
        self.revision = revision
        self.has_result = req.insert_statement is None and is_result_statement(req.sql)
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=4)
        self.progress: Progress = {}
        self.result_rows = 0
        self.result_bytes = 0
        self.started = time.perf_counter()
        self.written: Progress = {}
        self._cancelled = threading.Event()
        self._stream: Any = None
        self._future: Future[None] | None = None
        self._held: bytes | None = None

    # -- the HTTP thread's side ------------------------------------------
    def start(self) -> Execution:
        self._future = _WORKERS.submit(self._run)
        return self

    def cancel(self) -> None:
        """Stop a streaming query (the client left); a statement without result runs to its end."""
        self._cancelled.set()
        stream = self._stream
        if stream is not None:
            try:
                stream.cancel()
            except Exception:  # noqa: S110 - already finished or failed: nothing to cancel
                pass

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def summary(self) -> dict[str, str]:
        p = {**self.progress, **self.written}
        elapsed = p.get("elapsed_ns") or int((time.perf_counter() - self.started) * 1e9)
        return {
            "read_rows": str(p.get("read_rows", 0)),
            "read_bytes": str(p.get("read_bytes", 0)),
            "written_rows": str(p.get("written_rows", 0)),
            "written_bytes": str(p.get("written_bytes", 0)),
            "total_rows_to_read": str(p.get("total_rows_to_read", 0)),
            "result_rows": str(self.result_rows),
            "result_bytes": str(self.result_bytes),
            "elapsed_ns": str(elapsed),
        }

    # -- the worker's side -----------------------------------------------
    def _put(self, kind: str, value: Any) -> None:
        while True:
            try:
                self.events.put((kind, value), timeout=0.1)
                return
            except queue.Full:
                if self._cancelled.is_set() and kind == DATA:
                    return  # nobody reads any more; drop the block

    def _block(self, data: bytes) -> None:
        """Hand over the block before this one: each block waits for the next (or the end), so a small
        result crosses threads once, with its end.  ClickHouse itself holds back up to 1 MiB."""
        held, self._held = self._held, data
        if held is not None:
            self._put(DATA, held)

    def _on_progress(self, progress: Progress) -> None:
        self.progress = progress

    def _run(self) -> None:
        conn, req = self.conn, self.req
        created: list[str] = []
        final: tuple[str, Any]
        conn.watch_progress(self._on_progress)
        try:
            if self.revision and req.output_format == "Native" and self.revision < 54405:
                req.settings.setdefault("low_cardinality_allow_in_native_format", "0")
            conn.prepare(req.params.get("database"), req.settings)
            for table in req.external:
                conn.q(f"CREATE TEMPORARY TABLE {quote_ident(table.name)} ({table.structure})")
                created.append(table.name)
                self._insert(
                    f"INSERT INTO {quote_ident(table.name)}".encode(), table.fmt, table.data, count=False
                )
            if req.insert_statement is not None:
                self._insert(req.insert_statement, req.insert_format, req.insert_data, count=True)
            elif self.has_result and self._stream_result():
                pass
            else:
                self._run_whole()
            final = (END, None)
        except ClickHouseError as ex:
            final = (ERROR, ex)
        except Exception as ex:  # noqa: BLE001 - any engine failure is a ClickHouse error to the client
            final = (ERROR, ClickHouseError.from_engine(ex))
        for name in created:
            try:
                conn.q(f"DROP TEMPORARY TABLE IF EXISTS {quote_ident(name)}")
            except ClickHouseError:
                conn.dirty = True
        conn.watch_progress(None)
        # The last event: after it the worker no longer touches the connection.
        held, self._held = self._held, None
        kind, value = final
        self._put(kind, (held, value))

    def _run_whole(self) -> None:
        conn, req = self.conn, self.req
        result = conn.q(req.sql, req.output_format, req.bind)
        data = result.bytes() or b""
        if data:
            self.has_result = True
            self.result_rows = int(result.rows_read())
            if self.revision and req.output_format == "Native":
                data = NativeRewriter(self.revision).rewrite(data)
            self.result_bytes = len(data)
            self._block(data)
        conn.after_statement(req.sql, first_keyword(req.sql), self.in_session)

    def _insert(self, statement: bytes, fmt: str, data: bytes, *, count: bool) -> None:
        raw = self.conn.raw
        try:
            inserter = raw.send_insert(statement.decode("utf-8", errors="backslashreplace"), fmt)
            try:
                if data:
                    inserter.append(data)
                res = inserter.finish()
            except BaseException:
                try:
                    inserter.cancel()
                except Exception:  # noqa: S110 - the original error is what matters
                    pass
                raise
        except ClickHouseError:
            raise
        except Exception as ex:
            raise ClickHouseError.from_engine(ex) from ex
        if count:
            # ClickHouse counts an INSERT's parsed rows as read and written
            self.written = {
                "read_rows": int(res.rows_written),
                "read_bytes": int(res.bytes_written),
                "written_rows": int(res.rows_written),
                "written_bytes": int(res.bytes_written),
                "elapsed_ns": int(res.elapsed * 1e9),
            }

    def _open_stream(self) -> Stream:
        return self.conn.stream(self.req.sql, self.req.output_format, self.req.bind)

    def _result_types(self) -> list[str] | None:
        """The query's column types with their time zones (DESCRIBE of the query)."""
        inner = _FORMAT_TAIL_RE.sub(b"", self.req.sql.rstrip().rstrip(b";"))
        try:
            res = self.conn.q(b"DESCRIBE TABLE (" + inner + b"\n)", "TabSeparatedRaw", self.req.bind)
        except ClickHouseError:
            return None
        return [line.split("\t")[1] for line in res.bytes().decode().splitlines() if "\t" in line]

    def _stream_result(self) -> bool:
        """Stream the result; False if the engine cannot stream this statement (DESCRIBE, SHOW ...)."""
        rewriter = (
            NativeRewriter(self.revision) if self.revision and self.req.output_format == "Native" else None
        )
        try:
            self._stream = stream = self._open_stream()
        except ClickHouseError as ex:
            if ex.code == 36 and "Streaming query is not supported" in ex.message:
                return False
            raise
        try:
            self._pump(stream, rewriter)
        finally:
            # an open stream would leave the connection answering empty results to the next query
            current = self._stream
            if current is not None:
                try:
                    current.cancel()
                except Exception:  # noqa: S110 - already ended
                    pass
        if self._cancelled.is_set():
            raise ClickHouseError.make(394, "QUERY_WAS_CANCELLED", "Query was cancelled")
        return True

    def _pump(self, stream: Stream, rewriter: NativeRewriter | None) -> None:
        first = True
        while not self._cancelled.is_set():
            try:
                chunk = stream.fetch()
            except ClickHouseError:
                if self._cancelled.is_set():
                    break
                raise
            if chunk is None:
                break
            rows, data = chunk
            if rewriter is not None:
                if first and rewriter.restore_tz and rewriter.has_plain_datetime(data):
                    # A DateTime lost its time zone: learn the real types, then run the query again
                    # (nothing was sent yet, so the client sees one consistent result).
                    stream.cancel()
                    self._stream = None
                    rewriter.result_types = self._result_types()
                    self._stream = stream = self._open_stream()
                    first = False
                    continue
                data = rewriter.rewrite(data)
            first = False
            self.result_rows += rows
            self.result_bytes += len(data)
            self._block(data)
