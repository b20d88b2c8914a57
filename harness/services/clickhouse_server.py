"""The real ClickHouse engine (chdb) served over the ClickHouse HTTP interface.

chdb embeds the ClickHouse engine in-process but cannot listen on a socket, so
this module puts a small HTTP front end on it.  Unmodified ``clickhouse-connect``
clients (sync and async), ``curl`` and anything else that speaks the ClickHouse
HTTP protocol talk to it as to a ClickHouse server:

    python -m harness.services.clickhouse_server --path DIR --port PORT [--host 127.0.0.1]

Protocol surface (what clickhouse-connect actually sends, see
``clickhouse_connect/driver/_backend/httpcommon.py``):

* ``GET /ping`` and ``GET /`` answer ``Ok.\\n``.
* Queries come in the ``query`` URL parameter, the body, or both (the URL part
  first, then a newline, then the body), or as multipart / url-encoded form
  fields.  A trailing ``FORMAT X`` picks the output format, otherwise
  ``default_format`` or TabSeparated.
* ``param_NAME`` parameters bind ``{NAME:Type}`` placeholders (chdb's ``params``
  use the same escaped-text value format as the HTTP interface).
* ``INSERT INTO t [(cols)] FORMAT F`` followed by data (after one newline) is
  streamed into chdb's ``send_insert`` in that format, so column lists are
  honoured.  The body may be compressed (``Content-Encoding`` lz4 frame, zstd,
  gzip, deflate), as clickhouse-connect compresses the whole body including the
  statement prefix.
* ``database`` parameter / ``X-ClickHouse-Database`` header select the
  database; every other parameter that is a ClickHouse setting is applied to
  the engine for that request (HTTP-transport-only parameters are ignored).
* Responses are compressed when ``enable_http_compression=1`` and the client
  accepts lz4 / zstd / gzip / deflate, exactly as ClickHouse does.
* Errors: the HTTP status ClickHouse uses for the error, the body
  ``Code: N. DB::Exception: ... (NAME) (version X)`` and the header
  ``X-ClickHouse-Exception-Code: N``.

One chdb session owns the data directory; a lock serialises engine access.
Per-request settings and the current database are tracked on that session and
only changed (``SET`` / ``USE``) when a request needs something different, so
the common case costs a single engine call.
"""

from __future__ import annotations

import argparse
import errno
import gzip
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
import zlib
from email.parser import BytesParser
from email.policy import HTTP as HTTP_POLICY
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlsplit

try:  # optional codecs; clickhouse-connect itself depends on lz4 and zstd
    import lz4.frame as _lz4_frame
except ImportError:  # pragma: no cover
    _lz4_frame = None  # type: ignore[assignment]

try:  # pragma: no cover - whichever zstd binding is present
    from compression import zstd as _zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    try:
        from backports import zstd as _zstd  # type: ignore[no-redef]
    except ImportError:
        _zstd = None

try:  # pragma: no cover
    import zstandard as _zstandard
except ImportError:  # pragma: no cover
    _zstandard = None  # type: ignore[assignment]

# Parameters of the HTTP interface that are not engine settings.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "quota_key",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "role",
        "enable_http_compression",
        "http_zlib_compression_level",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "http_wait_end_of_query",
        "http_response_buffer_size",
        "add_http_cors_header",
        "http_native_compression_disable_checksumming_on_decompress",
        "default_session_timeout",
    }
)

_SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRAILING_FORMAT_RE = re.compile(r"\bFORMAT\s+([A-Za-z_][A-Za-z0-9_]*)\s*;?\s*$", re.IGNORECASE)
# Leading comments / whitespace, then INSERT INTO <target> ... FORMAT <name>, then
# optional blanks and a single line feed; the data starts right after it.
_INSERT_FORMAT_RE = re.compile(
    rb"\A(?:\s|--[^\n]*\n|/\*.*?\*/)*(INSERT\s+INTO\s+(?:(?!\bFORMAT\b)[\s\S])*?)\s+FORMAT\s+([A-Za-z_][A-Za-z0-9_]*)[ \t]*(?:\r?\n)?",
    re.IGNORECASE,
)
# An INSERT whose text before "FORMAT" has these keywords is a query, not "statement + data"
# (e.g. VALUES ('a FORMAT b'), INSERT ... SELECT, FROM INFILE).
_NOT_DATA_INSERT_RE = re.compile(rb"\b(VALUES|SELECT|WITH|INFILE)\b", re.IGNORECASE)
_BACKQUOTED_RE = re.compile(rb"`(?:[^`\\]|\\.)*`|\"(?:[^\"\\]|\\.)*\"")
_CODE_RE = re.compile(r"Code:\s*(\d+)")
_NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]+)\)\s*(?:\(version [^)]*\))?\s*$")

_HTTP_400 = {
    "CANNOT_PARSE_TEXT",
    "CANNOT_PARSE_ESCAPE_SEQUENCE",
    "CANNOT_PARSE_QUOTED_STRING",
    "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    "CANNOT_PARSE_DATE",
    "CANNOT_PARSE_DATETIME",
    "CANNOT_PARSE_NUMBER",
    "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
    "CANNOT_PARSE_IPV4",
    "CANNOT_PARSE_IPV6",
    "CANNOT_PARSE_UUID",
    "CANNOT_PARSE_BOOL",
    "UNKNOWN_ELEMENT_IN_AST",
    "UNKNOWN_TYPE_OF_AST_NODE",
    "TOO_DEEP_AST",
    "TOO_BIG_AST",
    "UNEXPECTED_AST_STRUCTURE",
    "SYNTAX_ERROR",
    "INCORRECT_DATA",
    "TYPE_MISMATCH",
    "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    "UNKNOWN_QUERY_PARAMETER",
    "BAD_QUERY_PARAMETER",
    "INCORRECT_NUMBER_OF_COLUMNS",
    "BAD_ARGUMENTS",
}
_HTTP_404 = {
    "UNKNOWN_TABLE",
    "UNKNOWN_FUNCTION",
    "UNKNOWN_IDENTIFIER",
    "UNKNOWN_TYPE",
    "UNKNOWN_STORAGE",
    "UNKNOWN_DATABASE",
    "UNKNOWN_SETTING",
    "UNKNOWN_DIRECTION_OF_SORTING",
    "UNKNOWN_AGGREGATE_FUNCTION",
    "UNKNOWN_FORMAT",
    "UNKNOWN_DATABASE_ENGINE",
    "UNKNOWN_TYPE_OF_QUERY",
    "UNKNOWN_ROLE",
}
_HTTP_STATUS_BY_NAME = {"QUERY_IS_TOO_LARGE": 413, "NOT_IMPLEMENTED": 501, "REQUIRED_PASSWORD": 401}

_CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "TabSeparatedWithNames": "text/tab-separated-values; charset=UTF-8",
    "TSVWithNames": "text/tab-separated-values; charset=UTF-8",
    "TabSeparatedWithNamesAndTypes": "text/tab-separated-values; charset=UTF-8",
    "TSVWithNamesAndTypes": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "JSONCompactEachRow": "application/x-ndjson; charset=UTF-8",
    "Pretty": "text/plain; charset=UTF-8",
    "PrettyCompact": "text/plain; charset=UTF-8",
}


class ClickHouseError(Exception):
    """An error with a ClickHouse exception code, rendered like the server does."""

    def __init__(self, code: int, message: str, name: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.name = name

    @classmethod
    def from_engine(cls, ex: BaseException) -> ClickHouseError:
        text = str(ex).strip()
        idx = text.find("Code: ")
        if idx > 0:
            text = text[idx:]
        match = _CODE_RE.search(text)
        code = int(match.group(1)) if match else 1001
        name_match = _NAME_RE.search(text)
        name = name_match.group(1) if name_match else ""
        if not text.startswith("Code: "):
            name = name or "STD_EXCEPTION"
            text = f"Code: {code}. DB::Exception: {text}. ({name})"
        return cls(code, text, name)

    @classmethod
    def make(cls, code: int, name: str, message: str) -> ClickHouseError:
        return cls(code, f"Code: {code}. DB::Exception: {message}. ({name})", name)

    @property
    def http_status(self) -> int:
        if self.name in _HTTP_400:
            return 400
        if self.name in _HTTP_404:
            return 404
        return _HTTP_STATUS_BY_NAME.get(self.name, 500)


def _is_data_insert(statement: bytes) -> bool:
    return not _NOT_DATA_INSERT_RE.search(_BACKQUOTED_RE.sub(b"``", statement))


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


# ---------------------------------------------------------------------------
# compression


def _lz4_decompress(data: bytes) -> bytes:
    if _lz4_frame is None:
        raise ClickHouseError.make(48, "NOT_IMPLEMENTED", "lz4 is not available on this server")
    out = []
    while data:
        dec = _lz4_frame.LZ4FrameDecompressor()
        out.append(dec.decompress(data))
        if not dec.eof:
            raise ClickHouseError.make(432, "UNKNOWN_CODEC", "Truncated lz4 frame in request body")
        data = dec.unused_data
    return b"".join(out)


def _zstd_decompress(data: bytes) -> bytes:
    if _zstd is not None:
        return _zstd.decompress(data)
    if _zstandard is not None:
        reader = _zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
        return reader.read()
    raise ClickHouseError.make(48, "NOT_IMPLEMENTED", "zstd is not available on this server")


def _zstd_compress(data: bytes) -> bytes:
    if _zstd is not None:
        return _zstd.compress(data)
    return _zstandard.ZstdCompressor().compress(data)


def decompress_body(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity" or not data:
        return data
    try:
        if encoding == "lz4":
            return _lz4_decompress(data)
        if encoding == "zstd":
            return _zstd_decompress(data)
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(data)
        if encoding == "deflate":
            return zlib.decompress(data)
    except ClickHouseError:
        raise
    except Exception as ex:
        raise ClickHouseError.make(
            432, "UNKNOWN_CODEC", f"Cannot decompress request body with Content-Encoding {encoding}: {ex}"
        ) from ex
    raise ClickHouseError.make(432, "UNKNOWN_CODEC", f"Unsupported Content-Encoding: {encoding}")


def _response_codecs() -> dict[str, Any]:
    codecs: dict[str, Any] = {}
    if _lz4_frame is not None:
        codecs["lz4"] = _lz4_frame.compress
    if _zstd is not None or _zstandard is not None:
        codecs["zstd"] = _zstd_compress
    codecs["gzip"] = gzip.compress
    codecs["deflate"] = zlib.compress
    return codecs


RESPONSE_CODECS = _response_codecs()


def choose_encoding(accept: str) -> str | None:
    for item in accept.split(","):
        name = item.split(";")[0].strip().lower()
        if name in RESPONSE_CODECS:
            return name
    return None


# ---------------------------------------------------------------------------
# engine


class Engine:
    """One chdb session over the data directory, used under a lock."""

    def __init__(self, path: str):
        import chdb
        from chdb import session as chdb_session

        self.chdb_version = getattr(chdb, "__version__", "?")
        self.lock = threading.Lock()
        self._session: Any = chdb_session.Session(path)
        self._database: str | None = None
        self._applied: dict[str, str] = {}
        row = self._session.query("SELECT version(), timezone()", "TabSeparated").bytes().decode()
        self.version, self.timezone = row.rstrip("\n").split("\t")

    def close(self) -> None:
        with self.lock:
            if self._session is not None:
                self._session.close()
                self._session = None

    def _q(self, sql: str, fmt: str = "TabSeparated", params: dict[str, str] | None = None) -> Any:
        if self._session is None:
            raise ClickHouseError.make(210, "NETWORK_ERROR", "Server is shutting down")
        try:
            return self._session.query(sql, fmt, params=params or {})
        except Exception as ex:
            raise ClickHouseError.from_engine(ex) from ex

    def _prepare(self, database: str, settings: dict[str, str]) -> None:
        """Switch database and settings to what this request asks for (lock held)."""
        if database != self._database:
            self._database = None
            self._q(f"USE {_quote_ident(database)}")
            self._database = database
        for name in [n for n in self._applied if n not in settings]:
            self._q(f"SET {name} = DEFAULT")
            del self._applied[name]
        for name, value in settings.items():
            if self._applied.get(name) != value:
                self._q(f"SET {name} = {_quote(value)}")
                self._applied[name] = value

    def _after_statement(self, sql: str) -> None:
        head = sql.lstrip()[:4].upper()
        if head.startswith("USE"):
            self._database = None  # the client switched database itself

    def run_query(
        self, sql: str, fmt: str, params: dict[str, str], database: str, settings: dict[str, str]
    ) -> tuple[bytes, dict[str, str]]:
        with self.lock:
            self._prepare(database, settings)
            result = self._q(sql, fmt, params)
            self._after_statement(sql)
        if not hasattr(result, "bytes"):
            raise ClickHouseError.make(73, "UNKNOWN_FORMAT", f"Format {fmt} is not available over HTTP")
        data = result.bytes() or b""
        summary = {
            "read_rows": str(result.rows_read()),
            "read_bytes": str(result.bytes_read()),
            "written_rows": str(getattr(result, "rows_written", lambda: 0)()),
            "written_bytes": str(getattr(result, "bytes_written", lambda: 0)()),
            "total_rows_to_read": "0",
            "result_rows": str(result.rows_read()),
            "result_bytes": str(len(data)),
            "elapsed_ns": str(int(result.elapsed() * 1e9)),
        }
        return data, summary

    def run_insert(
        self, statement: str, fmt: str, data: bytes, database: str, settings: dict[str, str]
    ) -> dict[str, str]:
        with self.lock:
            self._prepare(database, settings)
            if self._session is None:
                raise ClickHouseError.make(210, "NETWORK_ERROR", "Server is shutting down")
            try:
                inserter = self._session.send_insert(statement, fmt)
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
        return {
            "read_rows": str(res.rows_written),
            "read_bytes": str(res.bytes_written),
            "written_rows": str(res.rows_written),
            "written_bytes": str(res.bytes_written),
            "total_rows_to_read": "0",
            "result_rows": str(res.rows_written),
            "result_bytes": str(res.bytes_written),
            "elapsed_ns": str(int(res.elapsed * 1e9)),
        }


# ---------------------------------------------------------------------------
# HTTP


def _read_chunked(rfile) -> bytes:
    parts: list[bytes] = []
    while True:
        line = rfile.readline(65537)
        if not line:
            raise ClickHouseError.make(33, "CANNOT_READ_ALL_DATA", "Unexpected end of chunked request body")
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        parts.append(rfile.read(size))
        rfile.readline(65537)


def _parse_form(content_type: str, body: bytes) -> tuple[dict[str, str], bool]:
    """Return the text fields of a multipart/form-data body and whether it had files."""
    msg = BytesParser(policy=HTTP_POLICY).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    fields: dict[str, str] = {}
    has_files = False
    if not msg.is_multipart():
        return fields, has_files
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        if part.get_filename():
            has_files = True
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            payload = b""
        charset = part.get_content_charset() or "utf-8"
        fields[str(name)] = payload.decode(charset)
    return fields, has_files


def _log(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except Exception:  # noqa: S110 - logging must never break a request
        pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ClickHouse"
    sys_version = ""
    engine: Engine  # set on the subclass built by make_server
    display_name = socket.gethostname()
    _what = ""
    timeout = 600  # idle keep-alive connections are closed after this many seconds

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # one line per request is written by _finish

    # -- plumbing --------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        # Headers and body go out as separate writes; without TCP_NODELAY, Nagle's
        # algorithm and the client's delayed ACK add ~40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return _read_chunked(self.rfile)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Keep-Alive", "timeout=600")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _finish(self, status: int, started: float, what: str) -> None:
        ms = (time.perf_counter() - started) * 1000
        what = " ".join(what.split())[:100]
        _log(f"{self.command} {status} {ms:.1f}ms {what}")

    def _simple(self, status: int, body: bytes, started: float, what: str) -> None:
        self._send(status, body, {"Content-Type": "text/html; charset=UTF-8"})
        self._finish(status, started, what)

    # -- entry points ----------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        started = time.perf_counter()
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        params = dict(parse_qsl(split.query, keep_blank_values=True))
        try:
            body = self._read_body()
        except ClickHouseError as ex:
            self.close_connection = True
            self._error(ex, started, "", {})
            return
        except Exception as ex:  # noqa: BLE001 - broken request framing
            self.close_connection = True
            self._error(ClickHouseError.make(33, "CANNOT_READ_ALL_DATA", str(ex)), started, "", {})
            return
        if path in ("/ping", "/replicas_status"):
            self._simple(200, b"Ok.\n", started, path)
            return
        if path != "/":
            self._simple(404, b"There is no handle " + path.encode() + b"\n", started, path)
            return
        if not body and "query" not in params and self.command in ("GET", "HEAD"):
            self._simple(200, b"Ok.\n", started, "/")
            return
        query_id = params.get("query_id") or str(uuid.uuid4())
        base_headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": self.engine.timezone,
            "X-ClickHouse-Server-Display-Name": self.display_name,
        }
        if "session_id" in params:
            base_headers["X-ClickHouse-Session-Id"] = params["session_id"]
        self._what = params.get("query", "")
        try:
            self._execute(params, body, base_headers, started)
        except ClickHouseError as ex:
            self._error(ex, started, self._what, base_headers)
        except Exception as ex:  # noqa: BLE001 - report anything as a ClickHouse error
            self._error(ClickHouseError.from_engine(ex), started, self._what, base_headers)

    def _error(self, ex: ClickHouseError, started: float, what: str, headers: dict[str, str]) -> None:
        text = ex.message if "(version " in ex.message else f"{ex.message} (version {self.engine.version})"
        headers = dict(headers)
        headers["X-ClickHouse-Exception-Code"] = str(ex.code)
        headers["Content-Type"] = "text/plain; charset=UTF-8"
        status = ex.http_status
        self._send(status, (text + "\n").encode(), headers)
        self._finish(status, started, f"{what} -> Code {ex.code}")

    def _execute(self, params: dict[str, str], body: bytes, headers: dict[str, str], started: float) -> None:
        content_type = self.headers.get("Content-Type") or ""
        if content_type.lower().startswith("multipart/form-data"):
            fields, has_files = _parse_form(content_type, body)
            if has_files:
                raise ClickHouseError.make(
                    48, "NOT_IMPLEMENTED", "External data (file form fields) is not supported"
                )
            params.update(fields)
            body = b""
        if params.get("decompress", "0") not in ("0", "", "false") or params.get("compress", "0") not in (
            "0",
            "",
            "false",
        ):
            raise ClickHouseError.make(
                48,
                "NOT_IMPLEMENTED",
                "ClickHouse-native block compression (compress/decompress=1) is not supported; use HTTP Content-Encoding",
            )
        body = decompress_body(body, self.headers.get("Content-Encoding") or "")

        database = params.get("database") or self.headers.get("X-ClickHouse-Database") or "default"
        bind = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        settings = {}
        for key, value in params.items():
            if key in TRANSPORT_PARAMS or key.startswith("param_"):
                continue
            if not _SETTING_NAME_RE.match(key):
                raise ClickHouseError.make(115, "UNKNOWN_SETTING", f"Unknown setting '{key}'")
            settings[key] = value

        query_param = params.get("query", "")
        # INSERT ... FORMAT X followed by data
        insert = _INSERT_FORMAT_RE.match(query_param.encode()) if query_param else None
        if insert and insert.end() == len(query_param.encode()) and _is_data_insert(insert.group(1)):
            statement, fmt, data = insert.group(1).decode(), insert.group(2).decode(), body
        else:
            full = (
                (query_param.encode() + b"\n" + body)
                if query_param and body
                else (query_param.encode() or body)
            )
            insert = _INSERT_FORMAT_RE.match(full[:1_048_576])
            if insert and _is_data_insert(insert.group(1)):
                statement, fmt, data = (
                    insert.group(1).decode(),
                    insert.group(2).decode(),
                    full[insert.end() :],
                )
            else:
                insert = None
                sql = full.decode("utf-8", errors="surrogateescape")
        if insert:
            self._what = f"{statement} FORMAT {fmt} [{len(data)} bytes]"
            summary = self.engine.run_insert(statement, fmt, data, database, settings)
            headers["X-ClickHouse-Summary"] = json.dumps(summary, separators=(",", ":"))
            headers["Content-Type"] = "text/plain; charset=UTF-8"
            self._send(200, b"", headers)
            self._finish(200, started, self._what)
            return

        self._what = sql
        if not sql.strip():
            raise ClickHouseError.make(62, "SYNTAX_ERROR", "Empty query")
        match = _TRAILING_FORMAT_RE.search(sql[-200:])
        fmt = match.group(1) if match else (params.get("default_format") or "TabSeparated")
        data, summary = self.engine.run_query(sql, fmt, bind, database, settings)
        headers["X-ClickHouse-Format"] = fmt
        headers["X-ClickHouse-Summary"] = json.dumps(summary, separators=(",", ":"))
        headers["Content-Type"] = _CONTENT_TYPES.get(
            fmt, "application/octet-stream" if data else "text/plain; charset=UTF-8"
        )
        if params.get("enable_http_compression", "0") in ("1", "true") and data:
            encoding = choose_encoding(self.headers.get("Accept-Encoding") or "")
            if encoding:
                data = RESPONSE_CODECS[encoding](data)
                headers["Content-Encoding"] = encoding
        self._send(200, data, headers)
        self._finish(200, started, sql)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def make_server(host: str, port: int, engine: Engine | None) -> Server:
    handler = type("BoundHandler", (Handler,), {"engine": engine})
    return Server((host, port), handler)


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"clickhouse_server: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.services.clickhouse_server",
        description="Serve the chdb ClickHouse engine over the ClickHouse HTTP interface.",
    )
    parser.add_argument("--path", required=True, help="data directory (created if missing)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)

    path = os.path.abspath(args.path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as ex:
        _fail(f"cannot create data directory {path}: {ex.strerror}")
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        _fail(f"data directory {path} is not a writable directory")

    # Bind first: a busy port is the most common failure and the cheapest to detect.
    try:
        server = make_server(args.host, args.port, None)
    except OSError as ex:
        if ex.errno == errno.EADDRINUSE:
            _fail(f"port {args.port} on {args.host} is already in use")
        _fail(f"cannot listen on {args.host}:{args.port}: {ex.strerror or ex}")
    try:
        engine = Engine(path)
    except Exception as ex:  # noqa: BLE001
        server.server_close()
        _fail(f"cannot open chdb data directory {path} (is another server using it?): {ex}")
    server.RequestHandlerClass.engine = engine  # type: ignore[attr-defined]

    stopping = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            _log(f"clickhouse_server: received {signal.Signals(signum).name}, shutting down")
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    _log(
        f"clickhouse_server ready on http://{args.host}:{server.server_address[1]} "
        f"(path {path}, chdb {engine.chdb_version}, ClickHouse {engine.version})"
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        engine.close()
        _log("clickhouse_server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
