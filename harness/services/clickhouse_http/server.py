"""The HTTP server: routes, authentication, and one query's life from request to answer."""

from __future__ import annotations

import argparse
import errno
import os
import queue
import secrets
import select
import signal
import socket
import string
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn
from urllib.parse import urlsplit

from harness.services.clickhouse_http.compression import choose_encoding, decompress_body
from harness.services.clickhouse_http.engine import Conn, Engine
from harness.services.clickhouse_http.errors import BAD_ARGUMENTS, CANNOT_READ_ALL_DATA, ClickHouseError
from harness.services.clickhouse_http.execution import DATA, END, Execution
from harness.services.clickhouse_http.native import MAX_REVISION
from harness.services.clickhouse_http.request import Request, build_request, parse_query_string, read_chunked
from harness.services.clickhouse_http.response import CONTENT_TYPES, Response
from harness.services.clickhouse_http.sessions import Sessions
from harness.services.clickhouse_http.users import Users

_TAG_ALPHABET = string.ascii_lowercase + string.digits
DEFAULT_PROGRESS_INTERVAL_MS = 100  # ClickHouse's http_headers_progress_interval_ms default
DISCONNECT_POLL = 0.1  # how often a waiting request checks that its client is still there


def _log(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except Exception:  # noqa: S110 - logging must never break a request
        pass


def _exception_tag() -> str:
    return "".join(secrets.choice(_TAG_ALPHABET) for _ in range(16))


class State:
    """What every request shares: the engine, its sessions and the users."""

    def __init__(self, engine: Engine, users: Users):
        self.engine = engine
        self.users = users
        self.sessions = Sessions(engine)

    def close(self) -> None:
        self.sessions.close()
        self.engine.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ClickHouse"
    sys_version = ""
    state: State  # set on the subclass built by make_server
    display_name = socket.gethostname()
    timeout = 600  # idle keep-alive connections are closed after this many seconds

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # one line per request is written by _log_request

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as separate writes; without TCP_NODELAY, Nagle's
        # algorithm and the client's delayed ACK add ~40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    # -- plumbing --------------------------------------------------------
    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return read_chunked(self.rfile)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _log_request(self, status: int, started: float, what: str) -> None:
        ms = (time.perf_counter() - started) * 1000
        _log(f"{self.command} {status} {ms:.1f}ms {' '.join(what.split())[:100]}")

    def _simple(self, status: int, body: bytes, started: float, what: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Keep-Alive", "timeout=600")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._log_request(status, started, what)

    def _client_gone(self) -> bool:
        """Whether the client closed its end (EOF on a readable socket)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _dispatch(self) -> None:
        started = time.perf_counter()
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        engine = self.state.engine
        base_headers = {
            "X-ClickHouse-Server-Display-Name": self.display_name,
            "X-ClickHouse-Exception-Tag": _exception_tag(),
        }
        response = Response(
            self.wfile,
            head=self.command == "HEAD",
            headers=base_headers,
            streaming=False,
            encoding=None,
            version=engine.version,
            tag=base_headers["X-ClickHouse-Exception-Tag"],
        )
        try:
            body = self._read_body()
        except Exception as ex:  # noqa: BLE001 - broken request framing
            self.close_connection = True
            err = (
                ex
                if isinstance(ex, ClickHouseError)
                else ClickHouseError.make(CANNOT_READ_ALL_DATA, "CANNOT_READ_ALL_DATA", str(ex))
            )
            status = response.fail(err, {})
            response.flush()
            self._log_request(status, started, "")
            return
        if path in ("/ping", "/replicas_status"):
            self._simple(200, b"Ok.\n", started, path)
            return
        if path != "/":
            self._simple(404, b"There is no handle " + path.encode() + b"\n", started, path)
            return
        url_params = parse_query_string(split.query)
        if not body and b"query" not in {k.encode() for k in url_params} and self.command in ("GET", "HEAD"):
            self._simple(200, b"Ok.\n", started, "/")
            return
        what = ""
        try:
            body = decompress_body(body, self.headers.get("Content-Encoding") or "")
            req = build_request(url_params, self.headers.get("Content-Type") or "", body)
            what = req.what
            database = req.params.get("database") or self.headers.get("X-ClickHouse-Database")
            if database:
                req.params["database"] = database
            user = self.state.users.authenticate(self.headers, req.params)
            base_headers["X-ClickHouse-Query-Id"] = req.params.get("query_id") or str(uuid.uuid4())
            base_headers["X-ClickHouse-Format"] = req.output_format
            base_headers["X-ClickHouse-Timezone"] = engine.timezone
            session_id = req.params.get("session_id")
            if session_id:
                base_headers["X-ClickHouse-Session-Id"] = session_id
                ctx = self.state.sessions.session(
                    user, session_id, req.params.get("session_timeout"), req.flag("session_check")
                )
            else:
                ctx = self.state.sessions.sessionless()
            with ctx as conn:
                status = self._run(conn, req, response, in_session=bool(session_id), started=started)
        except ClickHouseError as ex:
            status = response.fail(ex, {}) if not response.body_started else 200
            response.flush()
            what = f"{what} -> Code {ex.code}"
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            status = 499
            what = f"{what} -> client went away"
        except Exception as ex:  # noqa: BLE001 - a bug here still answers as a ClickHouse error
            _log(f"clickhouse_server: unexpected {type(ex).__name__}: {ex}")
            self.close_connection = True
            err = ClickHouseError.make(1001, "STD_EXCEPTION", f"{type(ex).__name__}: {ex}")
            status = response.fail(err, {}) if not response.body_started else 200
            response.flush()
            what = f"{what} -> {type(ex).__name__}"
        self._log_request(status, started, what)

    # -- one query -------------------------------------------------------
    def _run(self, conn: Conn, req: Request, response: Response, *, in_session: bool, started: float) -> int:
        revision = 0
        if req.params.get("client_protocol_version"):
            try:
                revision = int(req.params["client_protocol_version"])
            except ValueError:
                raise ClickHouseError.make(
                    BAD_ARGUMENTS, "BAD_ARGUMENTS", "client_protocol_version must be an integer"
                ) from None
            if revision > MAX_REVISION:
                # Documented refusal: the Native layout of later revisions is not produced here.
                raise ClickHouseError.make(
                    BAD_ARGUMENTS,
                    "BAD_ARGUMENTS",
                    f"client_protocol_version {revision} is not supported by this server (at most {MAX_REVISION})",
                )
        encoding = None
        if req.flag("enable_http_compression"):
            encoding = choose_encoding(self.headers.get("Accept-Encoding") or "")
        response.configure(
            streaming=not (req.flag("wait_end_of_query") or req.flag("http_wait_end_of_query")),
            encoding=encoding,
        )
        send_progress = req.flag("send_progress_in_http_headers")
        try:
            interval = (
                int(req.params.get("http_headers_progress_interval_ms") or DEFAULT_PROGRESS_INTERVAL_MS)
                / 1000
            )
        except ValueError:
            interval = DEFAULT_PROGRESS_INTERVAL_MS / 1000
        interval = max(interval, 0.1)  # ClickHouse's minimum for this setting is 100 ms
        content_type = CONTENT_TYPES.get(req.output_format, "application/octet-stream")
        execution = Execution(conn, req, in_session=in_session, revision=revision).start()
        cancel_on_close = req.flag("cancel_http_readonly_queries_on_client_close") and execution.has_result
        next_progress = time.monotonic() + interval
        client_gone = False
        got_final = False
        status = 200
        try:
            while True:
                now = time.monotonic()
                wait = (
                    min(DISCONNECT_POLL, max(0.0, next_progress - now)) if send_progress else DISCONNECT_POLL
                )
                try:
                    kind, value = execution.events.get(timeout=wait)
                except queue.Empty:
                    if client_gone:
                        continue
                    if self._client_gone():
                        # ClickHouse cancels a read-only query when the client closes only with
                        # cancel_http_readonly_queries_on_client_close=1 (clickhouse-connect sets it);
                        # any other statement runs on to its end.
                        client_gone = True
                        if cancel_on_close:
                            execution.cancel()
                            _log(
                                f"query {response.headers.get('X-ClickHouse-Query-Id')} cancelled: client went away"
                            )
                        continue
                    if send_progress and time.monotonic() >= next_progress:
                        response.progress(execution.summary())
                        response.flush()
                        next_progress = time.monotonic() + interval
                    continue
                if kind != DATA:
                    got_final = True
                if client_gone:
                    if got_final:
                        break
                    continue
                if kind == DATA:
                    response.data(value, execution.summary(), content_type)
                    if execution.events.empty():
                        response.flush()  # nothing else ready: the client gets this block now
                    continue
                last, outcome = value
                if last is not None:
                    response.data(last, execution.summary(), content_type)
                if kind == END:
                    status = response.finish(execution.summary(), execution.has_result, content_type)
                else:
                    status = response.fail(outcome, execution.summary())
                response.flush()
                break
        except (BrokenPipeError, ConnectionResetError):
            client_gone = True
            execution.cancel()
        finally:
            # the worker must be done with the connection before it is given back
            if not got_final:
                execution.cancel()
            while not got_final:
                got_final = execution.events.get()[0] != DATA
        if client_gone:
            self.close_connection = True
            return 499
        return status


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def make_server(host: str, port: int, state: State | None) -> Server:
    handler = type("BoundHandler", (Handler,), {"state": state})
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
    parser.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="a user and its password (repeatable); default: only 'default' with an empty password",
    )
    parser.add_argument("--users", metavar="FILE", help="users file: name:password lines, or a JSON object")
    args = parser.parse_args(argv)

    try:
        users = Users.from_options(args.user, args.users)
    except (OSError, ValueError) as ex:
        _fail(f"users: {ex}")
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
    state = State(engine, users)
    server.RequestHandlerClass.state = state  # type: ignore[attr-defined]

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
        f"(path {path}, chdb {engine.chdb_version}, ClickHouse {engine.version}, "
        f"users {', '.join(sorted(users.passwords))})"
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        state.close()
        _log("clickhouse_server stopped")
    return 0
