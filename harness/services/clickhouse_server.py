"""The real ClickHouse engine (chdb) served over the ClickHouse HTTP interface.

    python -m harness.services.clickhouse_server --path DIR --port PORT [--host 127.0.0.1]
        [--user NAME:PASSWORD ...] [--users FILE]

The server lives in :mod:`harness.services.clickhouse_http`, one module per concern; this module
is its command line, kept under the name the service block and the docs use.
"""

from __future__ import annotations

import sys

from harness.services.clickhouse_http.server import main

if __name__ == "__main__":
    sys.exit(main())
