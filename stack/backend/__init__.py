"""Throughline reference backend: profiles, threads, WebSocket chat with a supervisor and agents,
rate limits, usage events (PostgreSQL outbox -> ClickHouse), billing and invoices."""
