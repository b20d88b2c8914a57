"""The real ClickHouse engine (chdb) behind the ClickHouse HTTP interface, one module per concern.

chdb embeds the ClickHouse engine in-process but cannot listen on a socket, so this package puts
an HTTP front end on it.  Unmodified ``clickhouse-connect`` (sync and async), ``curl`` and
anything else that speaks the HTTP interface talk to it as to a ClickHouse 26 server.

Modules:

* :mod:`.server` - routes (``/ping``, ``/``), one request's life, the command line.
* :mod:`.request` - parameters, SQL and parameter values as bytes, INSERT data, multipart
  external data.
* :mod:`.users` - ``--user`` / ``--users``, credentials from headers, Basic auth or URL;
  AUTHENTICATION_FAILED (516).
* :mod:`.sessions` - ``session_id`` sessions, ``session_timeout``, ``session_check``,
  SESSION_IS_LOCKED, and the connections sessionless requests borrow.
* :mod:`.engine` - chdb connections with the settings / database each one has applied.
* :mod:`.execution` - one statement in a worker thread: streamed blocks, external tables,
  truthful counters, cancel.
* :mod:`.response` - buffered or streamed answers, progress headers, in-stream exceptions.
* :mod:`.native` - Native output for the client's ``client_protocol_version``.
* :mod:`.compression` - Content-Encoding in and out.
* :mod:`.errors` - ClickHouse error text, codes and HTTP statuses.

How sessions are kept: chdb 4.x runs one engine per process over the data directory and gives
each connection its own settings, current database and temporary tables; queries on different
connections run in parallel.  So a ClickHouse session is a chdb connection of its own, and
sessionless requests borrow pooled connections whose request settings are undone afterwards.
Where this differs from ClickHouse is said in :mod:`.sessions`, :mod:`.response` and
:mod:`.native`; in short: URL settings of a session request are undone by re-applying the
session's values (read back after each ``SET``); expired sessions are closed when the next session
request comes; progress headers go out on a timer; a ``DateTime('tz')`` result column costs one
``DESCRIBE`` and a second run of the query before anything is sent; external tables are
temporary tables of the connection for the time of the query, so one cannot share the name of a
session's own temporary table; users have no grants.
"""
