"""The console's one way of reading rows: as dictionaries by column name (psycopg's
``dict_row``), which the templates read as ``row.column``."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row


async def records(
    conn: psycopg.AsyncConnection[Any], sql: str, params: Any = None
) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()
