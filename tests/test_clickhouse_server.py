"""harness.services.clickhouse_server: real process, real chdb engine, unmodified clickhouse-connect."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError, StreamFailureError
from clickhouse_connect.driver.external import ExternalData
from clickhouse_connect.driver.summary import QuerySummary

REPO = Path(__file__).resolve().parents[1]
START_DEADLINE = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, path: Path, port: int | None = None, args: list[str] | None = None):
        self.path = path
        self.args = args or []
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = path.parent / f"{path.name}-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self.startup_seconds = 0.0

    def start(self) -> ServerProcess:
        started = time.monotonic()
        self._log_file = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness.services.clickhouse_server",
                "--path",
                str(self.path),
                "--port",
                str(self.port),
                *self.args,
            ],
            cwd=REPO,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = started + START_DEADLINE
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as r:
                    if r.read() == b"Ok.\n":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"server not ready within {START_DEADLINE}s:\n{self.log.read_text()}")
            time.sleep(0.02)  # poll interval, bounded by the deadline above
        self.startup_seconds = time.monotonic() - started
        return self

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for a clean exit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self._log_file.close()
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        if hasattr(self, "_log_file"):
            self._log_file.close()

    def client(self, **kwargs):
        return clickhouse_connect.get_client(host="127.0.0.1", port=self.port, **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # `default` keeps its empty password (what the harness and the reference platform use); alice is
    # there for the wrong-password test.
    srv = ServerProcess(
        tmp_path_factory.mktemp("clickhouse") / "data", args=["--user", "default:", "--user", "alice:s3cret"]
    ).start()
    try:
        yield srv
    finally:
        srv.kill()


@pytest.fixture(scope="module")
def client(server: ServerProcess):
    c = server.client()
    c.command("CREATE DATABASE IF NOT EXISTS analytics")
    c.command(
        """CREATE TABLE IF NOT EXISTS analytics.usage_events (
            event_id UUID, user_id String, model LowCardinality(String), tokens UInt32,
            cost_usd Decimal(18, 6), created_at DateTime64(3, 'UTC')
        ) ENGINE = MergeTree ORDER BY (user_id, created_at)"""
    )
    yield c
    c.close()


def _events(user: str, n: int = 3) -> list[list]:
    base = dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=dt.UTC)
    return [
        [uuid.uuid4(), user, "gpt-x", 10 + i, Decimal("0.000123") * (i + 1), base + dt.timedelta(seconds=i)]
        for i in range(n)
    ]


COLUMNS = ["event_id", "user_id", "model", "tokens", "cost_usd", "created_at"]


def _http(server: ServerProcess, path: str, data: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(server.url + path, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_ping_and_root(server):
    assert _http(server, "/ping")[::2] == (200, b"Ok.\n")
    assert _http(server, "/")[::2] == (200, b"Ok.\n")
    assert "clickhouse_server ready on http://127.0.0.1:" in server.log.read_text()


def test_plain_http_formats_and_headers(server):
    status, headers, body = _http(server, "/?query=SELECT%201%20AS%20x%2C%20%27a%27%20AS%20s")
    assert (status, body) == (200, b"1\ta\n")
    assert headers["X-ClickHouse-Format"] == "TabSeparated"
    assert headers["X-ClickHouse-Timezone"]
    assert headers["X-ClickHouse-Query-Id"]
    assert headers["X-ClickHouse-Server-Display-Name"]
    assert json.loads(headers["X-ClickHouse-Summary"])["result_rows"] == "1"
    status, headers, body = _http(
        server, "/", data=b"SELECT number FROM system.numbers LIMIT 3 FORMAT JSONEachRow"
    )
    assert status == 200 and headers["X-ClickHouse-Format"] == "JSONEachRow"
    assert [json.loads(line)["number"] for line in body.splitlines()] == [0, 1, 2]
    status, headers, body = _http(
        server,
        "/?enable_http_compression=1&default_format=JSONCompact",
        data=b"SELECT 42",
        headers={"Accept-Encoding": "gzip"},
    )
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(body))["data"] == [[42]]


def test_command_and_query_with_bound_params(client):
    assert client.command("SELECT 1") == 1
    client.command(
        "CREATE TABLE IF NOT EXISTS analytics.kv (k String, v Int64) ENGINE = MergeTree ORDER BY k"
    )
    client.command("INSERT INTO analytics.kv VALUES ('a', 1), ('b', 2), ('tab\\there', 3)")
    result = client.query(
        "SELECT k, v FROM analytics.kv WHERE v >= {min_v:Int64} OR k = {key:String} ORDER BY k",
        parameters={"min_v": 2, "key": "tab\there"},
    )
    assert result.result_rows == [("b", 2), ("tab\there", 3)]
    client.command("INSERT INTO analytics.kv VALUES ('x FORMAT y', 9)")
    assert client.command("SELECT v FROM analytics.kv WHERE k = 'x FORMAT y'") == 9
    # client-side (%s) binding also works
    assert client.query("SELECT %(x)s || 'y'", parameters={"x": "it's"}).result_rows == [("it'sy",)]


def test_form_encoded_params_and_session_id(server, client):
    c = server.client(form_encode_query_params=True, session_id="tl-session-1")
    try:
        assert c.query(
            "SELECT {a:String} || {b:String}", parameters={"a": "x" * 5000, "b": "!"}
        ).result_rows == [("x" * 5000 + "!",)]
    finally:
        c.close()


def test_large_multi_block_compressed_insert_and_stream(server, client):
    client.command(
        "CREATE TABLE IF NOT EXISTS analytics.big (n UInt64, s String) ENGINE = MergeTree ORDER BY n"
    )
    for compress in ("lz4", "zstd"):
        c = server.client(compress=compress)
        try:
            data = [[i, f"row-{i}"] for i in range(300_000)]
            assert c.insert("analytics.big", data, column_names=["n", "s"]).written_rows == 300_000
        finally:
            c.close()
    assert client.command("SELECT count(), sum(n) FROM analytics.big") == [
        "600000",
        str(2 * sum(range(300_000))),
    ]
    with client.query_rows_stream("SELECT n FROM analytics.big WHERE n < 1000 ORDER BY n") as stream:
        assert sum(1 for _ in stream) == 2000


def test_query_df(client):
    client.insert("analytics.usage_events", _events("df-user"), column_names=COLUMNS)
    df = client.query_df(
        "SELECT user_id, tokens, cost_usd FROM analytics.usage_events WHERE user_id = 'df-user' ORDER BY tokens"
    )
    assert list(df.columns) == ["user_id", "tokens", "cost_usd"]
    assert df["tokens"].tolist() == [10, 11, 12]


@pytest.mark.parametrize("compress", [False, "lz4", "zstd", "gzip", True])
def test_insert_round_trip_with_compression(server, client, compress):
    user = f"user-{compress}"
    rows = _events(user, 5)
    c = server.client(compress=compress)
    try:
        summary = c.insert("analytics.usage_events", rows, column_names=COLUMNS)
        assert summary.written_rows == 5
        got = c.query(
            f"SELECT {', '.join(COLUMNS)} FROM analytics.usage_events WHERE user_id = %(u)s ORDER BY created_at",
            parameters={"u": user},
        )
    finally:
        c.close()
    expected = [tuple(r[:5]) + (r[5].replace(tzinfo=None),) for r in rows]
    assert [tuple(r) for r in got.result_rows] == expected
    assert isinstance(got.result_rows[0][4], Decimal) and got.result_rows[0][4] == Decimal("0.000123")
    assert isinstance(got.result_rows[0][0], uuid.UUID)


def test_insert_column_subset_honoured(client):
    client.command(
        "CREATE TABLE IF NOT EXISTS analytics.subset (a UInt32, b String DEFAULT 'dflt', c Float64) ENGINE = Memory"
    )
    client.insert("analytics.subset", [[1, 1.5], [2, 2.5]], column_names=["a", "c"])
    assert client.query("SELECT a, b, c FROM analytics.subset ORDER BY a").result_rows == [
        (1, "dflt", 1.5),
        (2, "dflt", 2.5),
    ]
    # raw insert: statement + data in one uncompressed body, and compressed with the statement in the URL
    client.raw_insert("analytics.subset", ["a", "b"], "3\tthree\n", fmt="TabSeparated", compression=None)
    client.raw_insert(
        "analytics.subset", ["a", "b"], gzip.compress(b"4\tfour\n"), fmt="TabSeparated", compression="gzip"
    )
    assert client.query("SELECT a, b, c FROM analytics.subset WHERE a > 2 ORDER BY a").result_rows == [
        (3, "three", 0.0),
        (4, "four", 0.0),
    ]


def test_datetime64_utc_aware(server, client):
    c = server.client(tz_mode="aware")
    try:
        row = c.query("SELECT toDateTime64('2024-05-06 07:08:09.123', 3, 'UTC') AS t").result_rows[0][0]
    finally:
        c.close()
    assert row == dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=dt.UTC)


async def test_async_client_round_trip(server, client):
    ac = await clickhouse_connect.get_async_client(host="127.0.0.1", port=server.port)
    try:
        rows = _events("async-user", 2)
        await ac.insert("analytics.usage_events", rows, column_names=COLUMNS)
        result = await ac.query(
            "SELECT event_id, cost_usd FROM analytics.usage_events WHERE user_id = {u:String} ORDER BY created_at",
            parameters={"u": "async-user"},
        )
        assert result.result_rows == [(r[0], r[4]) for r in rows]
        assert (
            await ac.command("SELECT count() FROM analytics.usage_events WHERE user_id = 'async-user'") == 2
        )
        with pytest.raises(DatabaseError) as exc:
            await ac.query("SELECT * FROM analytics.no_such_table")
        assert exc.value.code == 60
    finally:
        await ac.close()


def test_database_selection(server, client):
    client.command("CREATE DATABASE IF NOT EXISTS other")
    client.command("CREATE TABLE IF NOT EXISTS other.only_here (x UInt8) ENGINE = Memory")
    client.command("INSERT INTO other.only_here VALUES (7)")
    c = server.client(database="other")
    try:
        assert c.query("SELECT x FROM only_here").result_rows == [(7,)]
        assert c.command("SELECT currentDatabase()") == "other"
    finally:
        c.close()
    # the default client is unaffected
    assert client.command("SELECT currentDatabase()") == "default"
    # header-based selection, as plain HTTP users may do
    status, _, body = _http(
        server, "/", data=b"SELECT x FROM only_here", headers={"X-ClickHouse-Database": "other"}
    )
    assert (status, body) == (200, b"7\n")
    status, headers, body = _http(server, "/?database=nope_db", data=b"SELECT 1")
    assert status == 404 and headers["X-ClickHouse-Exception-Code"] == "81"


def test_settings_via_url(server, client):
    assert client.command("SELECT getSetting('max_block_size')") != 1234
    assert client.command("SELECT getSetting('max_block_size')", settings={"max_block_size": 1234}) == 1234
    # not sticky: the next request sees the default again
    assert client.command("SELECT getSetting('max_block_size')") != 1234
    c = server.client(settings={"max_result_rows": 2, "result_overflow_mode": "throw"})
    try:
        with pytest.raises(DatabaseError) as exc:
            c.query("SELECT number FROM system.numbers LIMIT 10")
        assert exc.value.code == 396  # TOO_MANY_ROWS_OR_BYTES
    finally:
        c.close()
    assert len(client.query("SELECT number FROM system.numbers LIMIT 10").result_rows) == 10
    status, _, body = _http(server, "/?max_block_size=77", data=b"SELECT getSetting('max_block_size')")
    assert (status, body) == (200, b"77\n")
    status, headers, body = _http(server, "/?not_a_setting_xyz=1", data=b"SELECT 1")
    assert status == 404 and headers["X-ClickHouse-Exception-Code"] == "115"


def test_unknown_table_raises_database_error_with_code_60(client, server):
    with pytest.raises(DatabaseError) as exc:
        client.query("SELECT * FROM analytics.does_not_exist")
    assert exc.value.code == 60
    assert "code: 60" in str(exc.value) and "UNKNOWN_TABLE" in str(exc.value)
    with pytest.raises(DatabaseError) as exc:
        client.command("SELEC 1")
    assert exc.value.code == 62
    status, headers, body = _http(server, "/", data=b"SELECT * FROM analytics.does_not_exist")
    assert status == 404
    assert headers["X-ClickHouse-Exception-Code"] == "60"
    assert body.startswith(b"Code: 60. DB::Exception:")
    # the connection and engine are fine afterwards
    assert client.command("SELECT 2") == 2


def test_concurrent_queries_from_threads(server, client):
    errors: list[BaseException] = []
    counts = [0] * 8

    def worker(i: int) -> None:
        c = server.client()
        try:
            for j in range(25):
                assert c.command(f"SELECT {i} * 1000 + {j}") == i * 1000 + j
                counts[i] += 1
        except BaseException as ex:  # noqa: BLE001
            errors.append(ex)
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    elapsed = time.perf_counter() - started
    assert not errors, errors
    assert sum(counts) == 200
    print(f"\n200 queries from 8 threads in {elapsed:.2f}s = {200 / elapsed:.0f} q/s")


def test_data_survives_restart(tmp_path):
    srv = ServerProcess(tmp_path / "data").start()
    try:
        c = srv.client()
        c.command("CREATE DATABASE IF NOT EXISTS analytics")
        c.command(
            "CREATE TABLE analytics.usage_events (event_id UUID, user_id String, cost_usd Decimal(18, 6), "
            "created_at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY (user_id, created_at)"
        )
        eid = uuid.uuid4()
        when = dt.datetime(2024, 1, 1, 0, 0, 0, 1000)
        c.insert("analytics.usage_events", [[eid, "u", Decimal("12.345678"), when]])
        c.close()
        assert srv.terminate() == 0
        assert "clickhouse_server stopped" in srv.log.read_text()
        srv.start()  # same path, same port
        c = srv.client()
        assert c.query("SELECT * FROM analytics.usage_events").result_rows == [
            (eid, "u", Decimal("12.345678"), when)
        ]
        c.close()
    finally:
        srv.kill()


def test_port_in_use_and_bad_path_exit_nonzero(server, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.services.clickhouse_server",
            "--path",
            str(tmp_path / "x"),
            "--port",
            str(server.port),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "already in use" in proc.stderr
    # the module server already owns its data directory
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.services.clickhouse_server",
            "--path",
            str(server.path),
            "--port",
            str(_free_port()),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "cannot open chdb data directory" in proc.stderr
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.services.clickhouse_server",
            "--path",
            str(blocker / "sub"),
            "--port",
            str(_free_port()),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "data directory" in proc.stderr


# ---------------------------------------------------------------------------
# Behaving like a ClickHouse server (issue 13): sessions, streaming, summaries, external data,
# protocol versions, bytes, users, counters.


def _wait_for(probe, what: str, timeout: float = 10.0):
    """Poll probe() until it returns something truthy; fail with what was expected and last seen."""
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.02)  # poll interval of a probe with a deadline
    raise AssertionError(f"{what} within {timeout}s; last seen: {last!r}")


def _running(client, marker: str) -> int:
    """How many queries whose text has marker the engine is running (not counting this probe)."""
    return client.command(
        "SELECT count() FROM system.processes WHERE position(query, {m:String}) > 0 "
        "AND position(query, 'system.processes') = 0",
        parameters={"m": marker},
    )


def test_should_keep_two_sessions_apart(server, client):
    a = server.client(session_id=f"a-{uuid.uuid4()}")
    b = server.client(session_id=f"b-{uuid.uuid4()}")
    try:
        a.command("SET max_block_size = 1234")
        a.command("CREATE DATABASE IF NOT EXISTS sess_db")
        a.command("USE sess_db")
        a.command("CREATE TEMPORARY TABLE scratch (x UInt8)")
        a.command("INSERT INTO scratch VALUES (1), (2)")
        # the session keeps its own state from one request to the next
        assert a.command("SELECT getSetting('max_block_size')") == 1234
        assert a.command("SELECT currentDatabase()") == "sess_db"
        assert a.command("SELECT sum(x) FROM scratch") == 3
        # ... and the other session sees none of it
        assert b.command("SELECT getSetting('max_block_size')") != 1234, "a SET leaked into another session"
        assert b.command("SELECT currentDatabase()") == "default", "a USE leaked into another session"
        with pytest.raises(DatabaseError) as exc:
            b.command("SELECT sum(x) FROM scratch")
        assert exc.value.code == 60, "a temporary table leaked into another session"
        # a request's own settings apply to that request only, also inside a session
        assert a.command("SELECT getSetting('max_block_size')", settings={"max_block_size": 77}) == 77
        assert a.command("SELECT getSetting('max_block_size')") == 1234
        # nor do sessionless requests see it
        assert client.command("SELECT getSetting('max_block_size')") != 1234
    finally:
        a.close()
        b.close()


async def test_should_keep_two_async_sessions_apart(server):
    a = await clickhouse_connect.get_async_client(
        host="127.0.0.1", port=server.port, session_id=f"aa-{uuid.uuid4()}"
    )
    b = await clickhouse_connect.get_async_client(
        host="127.0.0.1", port=server.port, session_id=f"ab-{uuid.uuid4()}"
    )
    try:
        await a.command("CREATE TEMPORARY TABLE async_scratch (x UInt8)")
        await a.command("INSERT INTO async_scratch VALUES (5)")
        await a.command("SET max_threads = 3")
        assert await a.command("SELECT x FROM async_scratch") == 5
        assert await a.command("SELECT getSetting('max_threads')") == 3
        assert await b.command("SELECT getSetting('max_threads')") != 3
        with pytest.raises(DatabaseError) as exc:
            await b.command("SELECT x FROM async_scratch")
        assert exc.value.code == 60
    finally:
        await a.close()
        await b.close()


def test_should_not_leak_settings_or_state_of_sessionless_requests(server):
    c = server.client(autogenerate_session_id=False)
    other = server.client(autogenerate_session_id=False)
    try:
        c.command("SET max_block_size = 4321")
        c.command("CREATE DATABASE IF NOT EXISTS sessionless_db")
        c.command("USE sessionless_db")
        for probe in (c, other):
            assert probe.command("SELECT getSetting('max_block_size')") != 4321, (
                "a sessionless SET stayed in force"
            )
            assert probe.command("SELECT currentDatabase()") == "default", "a sessionless USE stayed in force"
        assert c.command("SELECT getSetting('max_block_size')", settings={"max_block_size": 99}) == 99
        assert other.command("SELECT getSetting('max_block_size')") != 99
    finally:
        c.close()
        other.close()


def test_should_refuse_a_concurrent_query_in_a_locked_session(server, client):
    session = f"locked-{uuid.uuid4()}"
    first = server.client(session_id=session)
    second = server.client(session_id=session)
    marker = f"lock-{uuid.uuid4().hex[:8]}"
    outcome: dict = {}

    def slow() -> None:
        try:
            outcome["rows"] = first.query(
                f"SELECT sleepEachRow(0.05), '{marker}' FROM numbers(20) SETTINGS max_block_size = 1"
            ).result_rows
        except BaseException as ex:  # noqa: BLE001 - asserted below
            outcome["error"] = ex

    worker = threading.Thread(target=slow)
    worker.start()
    try:
        _wait_for(lambda: _running(client, marker), "the first query of the session running")
        with pytest.raises(DatabaseError) as exc:
            second.command("SELECT 1")
        assert exc.value.code == 373 and "SESSION_IS_LOCKED" in str(exc.value)
    finally:
        worker.join(timeout=30)
    assert "error" not in outcome, outcome
    assert len(outcome["rows"]) == 20
    assert second.command("SELECT 1") == 1, "the session stays locked after its query ended"
    first.close()
    second.close()


def test_should_refuse_session_check_on_an_unknown_session(server):
    session = f"known-{uuid.uuid4()}"
    c = server.client(session_id=session)
    try:
        c.command("SELECT 1")  # the session starts with its first query
        assert c.command("SELECT 1", settings={"session_check": 1}) == 1
        with pytest.raises(DatabaseError) as exc:
            c.command("SELECT 1", settings={"session_id": f"never-{uuid.uuid4()}", "session_check": 1})
        assert exc.value.code == 372 and "SESSION_NOT_FOUND" in str(exc.value)
        # session_timeout is the idle time before the session closes: 0 closes it after this query
        c.command("SELECT 1", settings={"session_timeout": 0})
        with pytest.raises(DatabaseError) as exc:
            c.command("SELECT 1", settings={"session_check": 1})
        assert exc.value.code == 372, "the session outlived its session_timeout"
        with pytest.raises(DatabaseError) as exc:
            c.command("SELECT 1", settings={"session_timeout": 3601})
        assert exc.value.code == 374  # INVALID_SESSION_TIMEOUT: above max_session_timeout
    finally:
        c.close()


def test_should_raise_a_stream_failure_for_an_error_after_rows(client):
    sql = "SELECT number, throwIf(number = 30000) FROM numbers(60000) SETTINGS max_block_size = 1000"
    seen = 0
    with pytest.raises(StreamFailureError) as exc:
        with client.query_rows_stream(sql) as stream:
            for _ in stream:
                seen += 1
    assert exc.value.code == 395 and "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO" in str(exc.value)
    assert seen >= 1000, "rows before the error reached the client"
    # A buffered query (wait_end_of_query=1) fails as a whole, with an HTTP error status.
    with pytest.raises(DatabaseError) as exc2:
        client.query(sql)
    assert not isinstance(exc2.value, StreamFailureError) and exc2.value.code == 395
    assert client.command("SELECT 3") == 3


def test_should_keep_a_long_query_alive_with_progress_headers(server):
    c = server.client(send_receive_timeout=1)
    try:
        started = time.monotonic()
        # per query: the client puts its own interval (at least 10 s) over client-level settings
        rows = c.query(
            "SELECT sleepEachRow(0.25), number FROM numbers(8) SETTINGS max_block_size = 1",
            settings={"http_headers_progress_interval_ms": 200},
        ).result_rows
        assert len(rows) == 8
        assert time.monotonic() - started > 1.5, "the query ran longer than the client's receive timeout"
    finally:
        c.close()


def test_should_cancel_a_query_whose_client_went_away(server, client):
    marker = f"cancel-{uuid.uuid4().hex[:8]}"
    # without progress headers the client gives up after its 1 s receive timeout and closes
    c = server.client(send_receive_timeout=1, settings={"send_progress_in_http_headers": 0})
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError):
            c.query(f"SELECT sleepEachRow(0.1), '{marker}' FROM numbers(100) SETTINGS max_block_size = 1")
    finally:
        c.close()
    # the 10 s query is gone long before it would have ended
    _wait_for(lambda: _running(client, marker) == 0, "the abandoned query cancelled", timeout=5)
    assert time.monotonic() - started < 8
    _wait_for(lambda: "cancelled: client went away" in server.log.read_text(), "the cancel in the server log")


def test_should_answer_ddl_with_a_summary_and_no_format(server, client):
    summary = client.command("CREATE TABLE IF NOT EXISTS analytics.ddl_probe (x UInt8) ENGINE = Memory")
    assert isinstance(summary, QuerySummary), f"command() returned {summary!r}"
    assert summary.query_id()
    dropped = client.command("DROP TABLE analytics.ddl_probe")
    assert isinstance(dropped, QuerySummary) and dropped.query_id()
    status, headers, body = _http(
        server, "/", data=b"CREATE TABLE analytics.ddl_probe2 (x UInt8) ENGINE = Memory"
    )
    assert (status, body) == (200, b"")
    assert "X-ClickHouse-Format" not in headers and headers["X-ClickHouse-Query-Id"]
    status, headers, _ = _http(server, "/", data=b"DROP TABLE analytics.ddl_probe2")
    assert status == 200 and "X-ClickHouse-Format" not in headers
    status, headers, _ = _http(server, "/", data=b"SELECT 1")
    assert headers["X-ClickHouse-Format"] == "TabSeparated"


def test_should_query_external_data(server, client):
    people = ExternalData(
        file_name="people.csv", data=b"1,ann\n2,bob\n", fmt="CSV", structure=["id UInt32", "name String"]
    )
    assert client.query("SELECT name FROM people WHERE id = 2", external_data=people).result_rows == [
        ("bob",)
    ]
    scores = ExternalData(file_name="scores", data=b"7\n9\n", types="UInt8")
    assert client.query("SELECT sum(_1) FROM scores", external_data=scores).result_rows == [(16,)]
    # per query only: gone afterwards, for this client and in a session too
    with pytest.raises(DatabaseError) as exc:
        client.query("SELECT * FROM people")
    assert exc.value.code == 60
    c = server.client(session_id=f"ext-{uuid.uuid4()}")
    try:
        assert c.query("SELECT count() FROM people", external_data=people).result_rows == [(2,)]
        with pytest.raises(DatabaseError):
            c.query("SELECT * FROM people")
    finally:
        c.close()


def test_should_keep_datetime_time_zones_and_low_cardinality(server, client):
    assert client.protocol_version == 54405, "the client fell back to protocol 0"
    client.command(
        "CREATE TABLE IF NOT EXISTS analytics.tz_probe (at DateTime('Asia/Tokyo'), model LowCardinality(String), "
        "n UInt8) ENGINE = Memory"
    )
    client.insert(
        "analytics.tz_probe",
        [[dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC), "gpt-x", 1]],
        column_names=["at", "model", "n"],
    )
    result = client.query(
        "SELECT n, at, model, toDateTime('2024-01-02 03:04:05', 'UTC') AS u FROM analytics.tz_probe"
    )
    assert [t.name for t in result.column_types] == [
        "UInt8",
        "DateTime('Asia/Tokyo')",
        "LowCardinality(String)",
        "DateTime('UTC')",
    ]
    n, at, model, u = result.result_rows[0]
    assert (n, model) == (1, "gpt-x")
    assert at == dt.datetime(2024, 5, 6, 16, 8, 9, tzinfo=ZoneInfo("Asia/Tokyo"))
    assert u == dt.datetime(2024, 1, 2, 3, 4, 5)  # UTC comes naive by default (tz_mode="naive_utc")
    # the time zone survives behind columns of every common serialization, over several blocks
    wide = client.query(
        "SELECT number AS n, [number, 1] AS a, map('k', number) AS m, if(number % 2, NULL, toString(number)) AS ns, "
        "toLowCardinality(if(number % 3 = 0, NULL, toString(number % 5))) AS lcn, tuple(number, 'a') AS t, "
        "toDecimal64(1.5, 3) AS d, toFixedString('ab', 2) AS f, [toLowCardinality(toString(number % 7))] AS alc, "
        "toIPv6('::1') AS ip6, CAST('a' AS Enum8('a' = 1, 'b' = 2)) AS e, [[1, 2], [3]] AS aa, "
        "toDateTime('2024-01-02 03:04:05', 'Asia/Tokyo') AS at FROM numbers(3000) SETTINGS max_block_size = 1000"
    )
    assert wide.column_types[-1].name == "DateTime('Asia/Tokyo')"
    assert wide.column_types[4].name == "LowCardinality(Nullable(String))"
    assert len(wide.result_rows) == 3000 and wide.result_rows[-1][4] == "4"
    # a protocol the server does not produce is refused, not answered in the wrong layout
    status, headers, _ = _http(server, "/?client_protocol_version=54470", data=b"SELECT 1 FORMAT Native")
    assert status == 400 and headers["X-ClickHouse-Exception-Code"] == "36"


def test_should_take_bytes_in_query_and_parameters(server, client):
    blob = bytes([0, 0xFF, 0x10, 0xC3])  # not UTF-8
    assert client.query("SELECT hex($blob$) AS h", parameters={"$blob$": blob}).result_rows == [("00FF10C3",)]
    assert client.query("SELECT hex({p:String}) AS h", parameters={"p": blob}).result_rows == [("00FF10C3",)]
    status, _, body = _http(server, "/?param_p=%FF%FE%00", data=b"SELECT hex({p:String})")
    assert (status, body) == (200, b"FFFE00\n")
    status, _, body = _http(server, "/", data=b"SELECT hex('\xff\xfe')")
    assert (status, body) == (200, b"FFFE\n")


def test_should_refuse_a_wrong_password_with_code_516(server):
    alice = server.client(username="alice", password="s3cret")
    try:
        assert alice.command("SELECT currentUser() != ''") == 1
    finally:
        alice.close()
    for username, password in (("alice", "wrong"), ("mallory", ""), ("default", "not-empty")):
        with pytest.raises(DatabaseError) as exc:
            server.client(username=username, password=password)
        assert exc.value.code == 516 and "AUTHENTICATION_FAILED" in str(exc.value), (username, str(exc.value))
    status, headers, body = _http(server, "/?user=alice&password=nope", data=b"SELECT 1")
    assert status == 403 and headers["X-ClickHouse-Exception-Code"] == "516"
    assert b"Authentication failed" in body


def test_should_report_rows_read_not_rows_returned(client):
    result = client.query("SELECT count() FROM numbers(100000) WHERE number % 3 = 0")
    assert result.result_rows == [(33334,)]
    assert result.summary["read_rows"] == "100000", result.summary
    assert result.summary["result_rows"] == "1", result.summary
    client.command("CREATE TABLE IF NOT EXISTS analytics.counted (x UInt32) ENGINE = Memory")
    written = client.insert("analytics.counted", [[i] for i in range(250)], column_names=["x"])
    assert written.written_rows == 250
    summary = client.command("INSERT INTO analytics.counted SELECT number FROM numbers(1000)")
    assert (
        isinstance(summary, QuerySummary)
        and summary.written_rows == 1000
        and summary.summary["read_rows"] == "1000"
    )


@pytest.mark.parametrize("compress", ["lz4", "zstd", "gzip", "deflate"])
def test_should_stream_compressed_blocks_and_a_compressed_error(server, compress):
    c = server.client(compress=compress)
    try:
        with c.query_rows_stream(
            "SELECT number FROM numbers(20000) SETTINGS max_block_size = 1000"
        ) as stream:
            assert sum(row[0] for row in stream) == sum(range(20000))
        with pytest.raises(StreamFailureError) as exc:
            with c.query_rows_stream(
                "SELECT number, throwIf(number = 15000) FROM numbers(20000) SETTINGS max_block_size = 1000"
            ) as stream:
                for _ in stream:
                    pass
        assert exc.value.code == 395
    finally:
        c.close()
