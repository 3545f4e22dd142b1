"""Database logins for the services, each inside its service's group role.

Migration 0019 creates the group roles (``chargeline_gateway`` and the others) with the
grants each service needs. ``create_login`` makes a login in one of them with a random
password and returns the service's database URL: the operator gives each service its own
(``CHARGELINE_DATABASE_URL`` in its unit), so the internet-facing gateway cannot read the
broker's credentials or the partners' secrets.
"""

from __future__ import annotations

import re
import secrets

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from schemas.errors import InputError, Refused

SERVICES = ("broker", "auth", "gateway", "webhooks", "ingest", "ocpp", "loads")


class LoginRefused(Refused):
    """The database would not create the login (the URL's role may not create roles)."""

    exit_code = 2


_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


def create_login(url: str, name: str, service: str) -> str:
    """Create (or give a new password to) login ``name`` in ``service``'s group; return
    the database URL for it. Run as the schema's owner (or a role that may create roles)."""
    if service not in SERVICES:
        raise InputError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    if not _NAME.fullmatch(name):
        raise InputError(f"login name {name!r}: lower-case letters, digits and _, from a letter")
    password = secrets.token_urlsafe(24)
    try:
        _set_login(url, name, service, password)
    except psycopg.Error as exc:
        raise LoginRefused(f"login {name!r} not created: {exc}", login=name) from exc
    params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    params.update(user=name, password=password)
    return make_conninfo("", **params)


def _set_login(url: str, name: str, service: str, password: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
        verb = sql.SQL("ALTER" if exists else "CREATE")
        conn.execute(
            sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                verb, sql.Identifier(name), sql.Literal(password)
            )
        )
        conn.execute(
            sql.SQL("GRANT {} TO {}").format(
                sql.Identifier(f"chargeline_{service}"), sql.Identifier(name)
            )
        )
