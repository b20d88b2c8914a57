"""Read-only probes of the platform's stores, and `eventually()` for polling asserts.

Probes know the stores and nothing about the browser. They read; they never write
production tables.
"""

from db_probes.clickhouse import ClickHouseProbe
from db_probes.eventually import EventuallyTimeout, ProbeRecord, eventually
from db_probes.postgres import PostgresProbe
from db_probes.redis import RedisProbe

__all__ = ["ClickHouseProbe", "EventuallyTimeout", "PostgresProbe", "ProbeRecord", "RedisProbe", "eventually"]
