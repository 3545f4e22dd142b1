"""Reading the database in assertions."""

from __future__ import annotations

from typing import Any

import psycopg


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params or None).fetchall()  # type: ignore[arg-type]
