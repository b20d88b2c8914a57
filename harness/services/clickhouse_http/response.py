"""The HTTP answer to one query, written the way ClickHouse writes it.

* ``wait_end_of_query=1``: the whole result is kept and sent at the end with a Content-Length, so
  an error at any point is an HTTP error status.
* Otherwise the result streams (chunked), each engine block as soon as it is made; the headers go
  out with the first block.  An error after that is written into the body as ClickHouse 25.11+
  does, framed with the response's ``X-ClickHouse-Exception-Tag`` (sent on every response, as
  26.x does), which is how clickhouse-connect tells it from data.
* ``send_progress_in_http_headers=1``: while no body was sent, the status line and then an
  ``X-ClickHouse-Progress`` header every ``http_headers_progress_interval_ms`` (default 100) keep
  the client's read timeout from firing.  An error after that has the status 200 already sent and
  comes with ``X-ClickHouse-Exception-Code``, which clients check.  ClickHouse sends these headers
  when the query reports progress, at most once per interval; this server sends them on that
  interval with the latest counters, also while the engine reports nothing (a sleep, a long sort).
* ``X-ClickHouse-Format`` only for statements with a result, as ClickHouse.
"""

from __future__ import annotations

import json
from typing import Any

from harness.services.clickhouse_http.compression import StreamCompressor, compress_whole
from harness.services.clickhouse_http.errors import ClickHouseError, exception_block

CONTENT_TYPES = {
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


def _summary_json(summary: dict[str, str]) -> str:
    return json.dumps(summary, separators=(",", ":"))


class Response:
    """Writes status, headers and body for one query over the handler's socket."""

    def __init__(
        self,
        wfile: Any,
        *,
        head: bool,
        headers: dict[str, str],
        streaming: bool,
        encoding: str | None,
        version: str,
        tag: str,
    ):
        self._wfile = wfile
        self._head = head
        self.headers = headers  # sent with the first body bytes (or the end)
        self.streaming = streaming
        self.encoding = encoding
        self.version = version
        self.tag = tag
        self.status_sent = False  # "HTTP/1.1 200 OK" (and progress headers) are on the wire
        self.body_started = False  # the blank line after the headers is on the wire
        self.status = 200
        self._buffer = bytearray()
        self._pending: list[bytes] = []
        self._compressor = StreamCompressor(encoding) if (encoding and streaming) else None

    def configure(self, *, streaming: bool, encoding: str | None) -> None:
        """Streamed or kept whole, and the response Content-Encoding (None: none)."""
        self.streaming = streaming
        self.encoding = encoding
        self._compressor = StreamCompressor(encoding) if (encoding and streaming) else None

    # -- wire ------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        self._pending.append(data)

    def flush(self) -> None:
        """Send what was written since the last flush, in one go (fewer packets for small answers)."""
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._wfile.write(data)

    def _status_line(self, status: int) -> bytes:
        import http.server

        phrase = http.server.BaseHTTPRequestHandler.responses.get(status, ("",))[0]
        return f"HTTP/1.1 {status} {phrase}\r\n".encode()

    def _header_lines(self, headers: dict[str, str]) -> bytes:
        return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1", errors="replace")

    # -- progress --------------------------------------------------------
    def progress(self, summary: dict[str, str]) -> None:
        if self.body_started:
            return
        out = b""
        if not self.status_sent:
            out += self._status_line(200)
            self.status_sent = True
        out += f"X-ClickHouse-Progress: {_summary_json(summary)}\r\n".encode()
        self._write(out)

    # -- body ------------------------------------------------------------
    def _start_body(self, summary: dict[str, str], has_result: bool, content_type: str) -> None:
        headers = dict(self.headers)
        headers["Content-Type"] = content_type
        if not has_result:
            headers.pop("X-ClickHouse-Format", None)
        headers["X-ClickHouse-Summary"] = _summary_json(summary)
        if self.encoding and has_result:
            headers["Content-Encoding"] = self.encoding
        headers["Transfer-Encoding"] = "chunked"
        headers["Keep-Alive"] = "timeout=600"
        out = b"" if self.status_sent else self._status_line(200)
        self._write(out + self._header_lines(headers) + b"\r\n")
        self.status_sent = self.body_started = True

    def _chunk(self, data: bytes) -> None:
        if data and not self._head:
            self._write(b"%x\r\n" % len(data) + data + b"\r\n")

    def data(self, data: bytes, summary: dict[str, str], content_type: str) -> None:
        if not self.streaming:
            self._buffer += data
            return
        if not self.body_started:
            self._start_body(summary, True, content_type)
        if self._compressor is not None:
            data = self._compressor.compress(data)
        self._chunk(data)

    def finish(self, summary: dict[str, str], has_result: bool, content_type: str) -> int:
        """End a successful answer; returns the status sent."""
        if self.streaming and self.body_started:
            if self._compressor is not None:
                self._chunk(self._compressor.finish())
            if not self._head:
                self._write(b"0\r\n\r\n")
            return 200
        body = bytes(self._buffer)
        headers = dict(self.headers)
        headers["Content-Type"] = content_type if has_result else "text/plain; charset=UTF-8"
        if not has_result:
            headers.pop("X-ClickHouse-Format", None)
        if self.encoding and body:
            body = compress_whole(body, self.encoding)
            headers["Content-Encoding"] = self.encoding
        headers["X-ClickHouse-Summary"] = _summary_json(summary)
        headers["Content-Length"] = str(len(body))
        headers["Keep-Alive"] = "timeout=600"
        out = b"" if self.status_sent else self._status_line(200)
        self._write(out + self._header_lines(headers) + b"\r\n" + (b"" if self._head else body))
        self.status_sent = self.body_started = True
        return 200

    def fail(self, error: ClickHouseError, summary: dict[str, str]) -> int:
        """End the answer with an error, wherever the answer is; returns the status sent."""
        text = error.text(self.version)
        if self.body_started:
            block = exception_block(text, self.tag)
            if self._compressor is not None:
                block = self._compressor.compress(block) + self._compressor.finish()
            self._chunk(block)
            if not self._head:
                self._write(b"0\r\n\r\n")
            return 200
        headers = dict(self.headers)
        headers.pop("X-ClickHouse-Format", None)
        headers["X-ClickHouse-Exception-Code"] = str(error.code)
        headers["Content-Type"] = "text/plain; charset=UTF-8"
        headers["X-ClickHouse-Summary"] = _summary_json(summary)
        body = (text + "\n").encode()
        headers["Content-Length"] = str(len(body))
        headers["Keep-Alive"] = "timeout=600"
        status = 200 if self.status_sent else error.http_status
        out = b"" if self.status_sent else self._status_line(status)
        self._write(out + self._header_lines(headers) + b"\r\n" + (b"" if self._head else body))
        self.status_sent = self.body_started = True
        return status
