"""One HTTP request read as ClickHouse reads it: parameters, SQL as bytes, INSERT data, external tables.

Everything stays bytes until the engine needs text: a query or a ``param_`` value may carry raw
binary (Parquet, binary strings, clickhouse-connect's ``$name$`` binary binds), and the engine
accepts the query as bytes.  Parameter values go to the engine as text in ClickHouse's *escaped*
format (the format the HTTP interface parses them in), so bytes that are not UTF-8 are passed as
``\\xHH`` escapes, which that format reads back as the same bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP as HTTP_POLICY
from urllib.parse import parse_qsl

from harness.services.clickhouse_http.errors import (
    CANNOT_READ_ALL_DATA,
    NOT_IMPLEMENTED,
    SYNTAX_ERROR,
    UNKNOWN_SETTING,
    ClickHouseError,
)
from harness.services.clickhouse_http.native import split_top_level

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
        "http_write_exception_in_output_format",
    }
)

_SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRAILING_FORMAT_RE = re.compile(rb"\bFORMAT\s+([A-Za-z_][A-Za-z0-9_]*)\s*;?\s*$", re.IGNORECASE)
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
_LEADING_NOISE_RE = re.compile(rb"\A(?:\s|--[^\n]*(?:\n|\Z)|/\*.*?\*/|\()*", re.DOTALL)
_FIRST_WORD_RE = re.compile(rb"[A-Za-z]+")
# Statements whose answer is a result set: these stream; everything else runs to completion.
_RESULT_STATEMENTS = frozenset(
    {b"SELECT", b"WITH", b"SHOW", b"DESCRIBE", b"DESC", b"EXISTS", b"EXPLAIN", b"VALUES"}
)


def text_value(raw: bytes) -> str:
    """Bytes as text for the engine; bytes that are not UTF-8 become ``\\xHH`` escapes."""
    return raw.decode("utf-8", errors="backslashreplace")


def first_keyword(sql: bytes) -> bytes:
    rest = _LEADING_NOISE_RE.sub(b"", sql[:4096], count=1)
    match = _FIRST_WORD_RE.match(rest)
    return match.group(0).upper() if match else b""


def is_result_statement(sql: bytes) -> bool:
    return first_keyword(sql) in _RESULT_STATEMENTS


@dataclass
class ExternalTable:
    """One file of "external data for query processing": a temporary table for this query only."""

    name: str
    data: bytes
    structure: str
    fmt: str


@dataclass
class Request:
    """What one HTTP request asks the engine for."""

    params: dict[str, str]
    sql: bytes = b""
    insert_statement: bytes | None = None  # INSERT INTO t (cols), with the data in insert_data
    insert_format: str = ""
    insert_data: bytes = b""
    output_format: str = "TabSeparated"
    bind: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    external: list[ExternalTable] = field(default_factory=list)

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.params.get(name)
        if value is None:
            return default
        return value.strip().lower() not in ("0", "", "false")

    @property
    def what(self) -> str:
        """A short description for the log line."""
        if self.insert_statement is not None:
            return f"{text_value(self.insert_statement)} FORMAT {self.insert_format} [{len(self.insert_data)} bytes]"
        return text_value(self.sql[:300])


def parse_query_string(query: str) -> dict[str, bytes]:
    """URL parameters with their values as raw bytes (percent-escapes are bytes, not UTF-8 text)."""
    return {k: v.encode("latin-1") for k, v in parse_qsl(query, keep_blank_values=True, encoding="latin-1")}


def read_chunked(rfile) -> bytes:  # type: ignore[no-untyped-def]
    parts: list[bytes] = []
    while True:
        line = rfile.readline(65537)
        if not line:
            raise ClickHouseError.make(
                CANNOT_READ_ALL_DATA, "CANNOT_READ_ALL_DATA", "Unexpected end of chunked request body"
            )
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        parts.append(rfile.read(size))
        rfile.readline(65537)


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(text fields, file fields) of a multipart/form-data body, values as bytes."""
    msg = BytesParser(policy=HTTP_POLICY).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    fields: dict[str, bytes] = {}
    files: dict[str, bytes] = {}
    if not msg.is_multipart():
        return fields, files
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            payload = b""
        (files if part.get_filename() is not None else fields)[str(name)] = payload
    return fields, files


def _is_data_insert(statement: bytes) -> bool:
    return not _NOT_DATA_INSERT_RE.search(_BACKQUOTED_RE.sub(b"``", statement))


def build_request(url_params: dict[str, bytes], content_type: str, body: bytes) -> Request:
    """Read the SQL, its data, settings, bound parameters and external tables out of one request.

    ``body`` is already decompressed.  As in ClickHouse, the ``query`` parameter comes first and the
    body follows after a line feed; a multipart/form-data body carries form fields (``query``,
    ``param_*``) and files (external tables).
    """
    raw = dict(url_params)
    files: dict[str, bytes] = {}
    if content_type.lower().startswith("multipart/form-data"):
        fields, files = _parse_multipart(content_type, body)
        raw.update(fields)
        body = b""

    params = {k: v.decode("utf-8", errors="replace") for k, v in raw.items() if not k.startswith("param_")}
    req = Request(params=params)
    req.bind = {k[6:]: text_value(v) for k, v in raw.items() if k.startswith("param_")}
    for key, value in params.items():
        if key in TRANSPORT_PARAMS:
            continue
        if any(key == f"{name}_{suffix}" for name in files for suffix in ("structure", "types", "format")):
            continue
        if not _SETTING_NAME_RE.match(key):
            raise ClickHouseError.make(UNKNOWN_SETTING, "UNKNOWN_SETTING", f"Unknown setting '{key}'")
        req.settings[key] = value
    if req.flag("decompress") or req.flag("compress"):
        raise ClickHouseError.make(
            NOT_IMPLEMENTED,
            "NOT_IMPLEMENTED",
            "ClickHouse-native block compression (compress/decompress=1) is not supported; use HTTP Content-Encoding",
        )

    for name, data in files.items():
        structure = params.get(f"{name}_structure")
        types = params.get(f"{name}_types")
        if not structure and types:
            structure = ", ".join(f"_{i + 1} {t.strip()}" for i, t in enumerate(split_top_level(types)))
        if not structure:
            raise ClickHouseError.make(
                36,
                "BAD_ARGUMENTS",
                f"Neither structure nor types have not been provided for external table {name}. "
                f"Use fields {name}_structure or {name}_types to do so",
            )
        req.external.append(
            ExternalTable(name, data, structure, params.get(f"{name}_format") or "TabSeparated")
        )

    query_param = raw.get("query", b"")
    insert = _INSERT_FORMAT_RE.match(query_param) if query_param else None
    if insert and insert.end() == len(query_param) and _is_data_insert(insert.group(1)):
        req.insert_statement, req.insert_format, req.insert_data = (
            insert.group(1),
            insert.group(2).decode(),
            body,
        )
        return req
    full = (query_param + b"\n" + body) if query_param and body else (query_param or body)
    insert = _INSERT_FORMAT_RE.match(full[:1_048_576])
    if insert and _is_data_insert(insert.group(1)):
        req.insert_statement, req.insert_format = insert.group(1), insert.group(2).decode()
        req.insert_data = full[insert.end() :]
        return req
    if not full.strip():
        raise ClickHouseError.make(SYNTAX_ERROR, "SYNTAX_ERROR", "Empty query")
    req.sql = full
    match = _TRAILING_FORMAT_RE.search(full[-200:])
    req.output_format = match.group(1).decode() if match else (params.get("default_format") or "TabSeparated")
    return req
