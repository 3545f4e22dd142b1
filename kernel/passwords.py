"""Checking a password against its argon2id hash, off the event loop, for the servers that
admit clients by password (the broker's MQTT clients, the OCPP bridge's stations).

argon2 is slow on purpose, and a restart makes every client reconnect at once: ``Checks``
runs each check on a worker thread and remembers a match, as an HMAC of the password under
a key that lives only in this process's memory, so a reconnect with the same password
skips argon2. A new hash for the name (a rotation) misses the memory; ``forget`` drops a
name at once (a revocation).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

#: Verifies a hash of any argon2 parameters (they are written in the hash).
_VERIFIER = PasswordHasher()


def verify(stored: str, password: str) -> bool:
    """Does ``password`` match the argon2 hash ``stored``? (Blocking: argon2 takes ms.)"""
    try:
        return _VERIFIER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


class Checks:
    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        # name → (the hash that matched, HMAC of the password that matched it)
        self._matched: dict[str, tuple[str, bytes]] = {}

    async def check(self, name: str, stored: str | None, password: str | None) -> bool:
        """Does ``password`` match ``name``'s hash ``stored`` (None: no password set)?"""
        if stored is None or not password:
            return False
        mac = hmac.new(self._key, password.encode(), hashlib.sha256).digest()
        remembered = self._matched.get(name)
        if remembered is not None and remembered[0] == stored:
            return hmac.compare_digest(remembered[1], mac)
        ok = await asyncio.to_thread(verify, stored, password)
        if ok:
            self._matched[name] = (stored, mac)
        return ok

    def forget(self, name: str) -> None:
        self._matched.pop(name, None)
