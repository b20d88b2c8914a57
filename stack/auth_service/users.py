"""User rows of the auth database and the JSON the API shows for them."""

from __future__ import annotations

from typing import Any

import asyncpg

__all__ = ["USER_COLUMNS", "user_json"]

USER_COLUMNS = "id, email, full_name, password_hash, email_verified_at, created_at"


def user_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "email": row["email"],
        "full_name": row["full_name"],
        "email_verified": row["email_verified_at"] is not None,
    }


async def by_id(pool: asyncpg.Pool | asyncpg.Connection, user_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1::uuid", user_id)


async def by_email(pool: asyncpg.Pool | asyncpg.Connection, email: str) -> asyncpg.Record | None:
    return await pool.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE email = $1", email)
