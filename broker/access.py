"""amqtt plugin: authentication and topic access from the registry's identities.

``RegistryAccess`` is both of amqtt's plugin kinds in one object, so the identity it
establishes at CONNECT is the one its topic checks use:

- **Connect.** Anonymous clients are refused. A client proves an identity with a client
  certificate (mTLS listener; the CN is the identity) or with username and password
  (argon2, checked on a worker thread so a reconnect storm does not stall the broker). The
  MQTT client id must equal the identity, so nobody can take over another controller's
  session. Revoked identities are refused, and so is a will on a topic the client may
  not publish to (the broker sends wills past the publish check).
- **Topics.** ``broker.policy.Policy`` decides every publish, subscribe and delivery.
- **Changes.** The plugin listens for the ``mqtt_identities`` notification (with a slow
  periodic reload as a safety net) and closes the live sessions of identities that were
  revoked or given a new password: rotating or revoking takes effect at once, without a
  restart. If the database goes away, the last identities loaded stay in force.

Every refusal is logged with the identity and the topic, and counted in ``refusals``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import psycopg
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from broker import identities
from broker.identities import Identity
from broker.policy import Access, Policy, Role
from kernel.logsafe import Summarised, shown
from kernel.mqtt import backoff
from kernel.passwords import Checks
from schemas.topics import DEFAULT_ROOT, Topics

log = logging.getLogger(__name__)

#: The attribute on amqtt's session that carries who the session authenticated as.
IDENTITY = "chargeline_identity"


class RegistryAccess(BaseAuthPlugin, BaseTopicPlugin):  # type: ignore[misc]  # no stubs
    @dataclass
    class Config:
        database_url: str = ""
        topic_root: str = DEFAULT_ROOT
        reload_s: float = 60.0

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.policy = Policy(Topics(self.config.topic_root))
        self.identities: dict[str, Identity] = {}
        self.refusals: Counter[str] = Counter()
        self._log = Summarised(log)
        # A reconnect with the same password skips argon2; a rotation misses the memory.
        self._passwords = Checks()
        self._watcher: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------
    async def on_broker_pre_start(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.config.database_url) as conn:
            self.identities = await identities.load(conn)
            self.policy.with_stations(await identities.load_stations(conn))
        log.info(
            "broker knows %d identities and %d OCPP stations",
            len(self.identities),
            len(self.policy.stations),
        )
        self._watcher = asyncio.create_task(self._watch_forever(), name="identities-watch")
        self._watcher.add_done_callback(_log_crash)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def _watch_forever(self) -> None:
        delays = backoff(first=0.5, cap=30.0)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.config.database_url, autocommit=True
                ) as conn:
                    await conn.execute("LISTEN mqtt_identities")
                    await self._reload(conn)  # whatever changed while we were not listening
                    delays = backoff(first=0.5, cap=30.0)
                    while True:
                        # One notification is enough (a reload reads everything). Let the
                        # generator finish: left suspended, it keeps the connection's lock.
                        async for _ in conn.notifies(timeout=self.config.reload_s, stop_after=1):
                            pass
                        await self._reload(conn)
            except psycopg.Error as exc:
                log.warning("identities: database unavailable (%s); keeping the last ones", exc)
                await asyncio.sleep(next(delays))

    async def _reload(self, conn: psycopg.AsyncConnection) -> None:
        fresh = await identities.load(conn)
        self.policy.with_stations(await identities.load_stations(conn))
        old, self.identities = self.identities, fresh
        for name, before in old.items():
            now = fresh.get(name)
            if now is None or now.revoked or now.argon2 != before.argon2:
                self._passwords.forget(name)
                why = "revoked" if now is None or now.revoked else "rotated"
                try:
                    await self._close_sessions_of(name, why)
                except Exception:  # one session must not stop the reloads
                    log.exception("could not close the session of %s (%s)", name, why)

    async def _close_sessions_of(self, name: str, why: str) -> None:
        session = self.context.get_session(name)
        if session is None or getattr(session, IDENTITY, None) is None:
            return
        if not session.transitions.is_connected():
            return
        log.warning("closing the session of %s: its credential was %s", name, why)
        # amqtt has no public "disconnect this client"; the broker subclass provides one.
        await self.context._broker_instance.disconnect(name)

    # --- authentication ----------------------------------------------------------------
    async def authenticate(self, *, session: Any) -> bool:
        refusal, identity = await self._check(session)
        if refusal is not None:
            self._refuse(
                "connect",
                f"client id {shown(session.client_id)} as {shown(session.username)}: {refusal}",
            )
            return False
        setattr(session, IDENTITY, identity)
        return True

    async def _check(self, session: Any) -> tuple[str | None, Identity | None]:
        cn = _certificate_cn(session)
        name = cn or session.username
        if not name:
            return "anonymous access is off", None
        if cn and session.username and session.username != cn:
            return f"username differs from the certificate's CN {shown(cn)}", None
        identity = self.identities.get(name)
        if identity is None:
            return "unknown identity", None
        if identity.revoked:
            return "credential revoked", None
        if identity.role is Role.STATION:
            return "an OCPP station's identity: it connects to `chargeline ocpp`", None
        if session.client_id != name:
            return "client id must equal the identity", None
        if cn is None and not await self._password_ok(identity, session.password):
            return "wrong password", None
        if cn is not None and not _is_bound(identity, session):
            # Revoking unbinds, and issuing binds the new certificate: an old (perhaps
            # stolen) certificate is refused for the rest of its validity.
            return "not the certificate issued for this identity (revoked or replaced)", None
        if session.will_flag and not self._may_publish(identity, session.will_topic):
            # The broker publishes a will on the client's behalf, past the publish check:
            # a will on another controller's desired topic would be a forged command.
            return f"will topic {shown(session.will_topic)} is not one it may publish to", None
        return None, identity

    def _may_publish(self, identity: Identity, topic: str | None) -> bool:
        return bool(topic) and self.policy.allows(
            name=identity.name, role=identity.role, access=Access.WRITE, topic=str(topic)
        )

    async def _password_ok(self, identity: Identity, password: str | None) -> bool:
        return await self._passwords.check(identity.name, identity.argon2, password)

    # --- topics --------------------------------------------------------------------------
    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        return self.decide(session, topic, action)

    def decide(self, session: Any, topic: str | None, action: Action | None) -> bool:
        """The synchronous decision behind ``topic_filtering`` (the broker calls it directly)."""
        identity: Identity | None = getattr(session, IDENTITY, None)
        if identity is None or not topic or action is None:
            return False
        access = Access.WRITE if action is Action.PUBLISH else Access.READ
        allowed = self.policy.allows(
            name=identity.name,
            role=identity.role,
            access=access,
            topic=topic,
            subscribing=action is Action.SUBSCRIBE,
        )
        if not allowed:
            self._refuse(
                action.value,
                f"{identity.name} ({identity.role}) on {shown(topic)}",
                by=identity.name,
            )
        return allowed

    def _refuse(self, what: str, detail: str, by: str | None = None) -> None:
        """Count a refusal; log it, or (in a flood) a summary of its kind now and then.
        ``by``, an authenticated identity, gets its own allowance of lines (never a name
        a client merely claimed: that would let it grow the set of kinds)."""
        self.refusals[what] += 1
        kind = f"refused {what}s" + (f" by {by}" if by else "")
        self._log.warning(kind, "refused %s: %s (%s so far)", what, detail, _counts(self.refusals))


def _counts(refusals: Counter[str]) -> str:
    return ", ".join(f"{n} {what}" for what, n in sorted(refusals.items()))


def _certificate_cn(session: Any) -> str | None:
    """The verified client certificate's CN (only the mTLS listener asks for one)."""
    ssl_object = getattr(session, "ssl_object", None)
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _is_bound(identity: Identity, session: Any) -> bool:
    """Is the session's client certificate the one recorded when ``identity``'s was issued?"""
    der = session.ssl_object.getpeercert(binary_form=True)
    return (
        identity.cert_sha256 is not None
        and der is not None
        and hmac.compare_digest(hashlib.sha256(der).digest(), identity.cert_sha256)
    )


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "%s stopped: identity changes are no longer seen",
            task.get_name(),
            exc_info=task.exception(),
        )
