"""The authorization server's signing keys: EC P-256 (ES256), kept in the data directory.

``signing.jwk`` signs; it is generated on first use, written with mode 0600, never
committed. Its key id (``kid``) is its RFC 7638 thumbprint, so a rotated key gets a new
id and the API can tell them apart.

Rotation (``chargeline auth rotate-key``) moves the signing key to ``previous/`` with the
time it retires (by default when every token it signed has expired) and makes a new
one. The JWKS publishes the signing key and every previous key not yet retired, so
tokens signed before the rotation keep working until they expire, and the API, seeing
the new ``kid``, fetches the new key before the first token it signs arrives. A running
authorization server notices the rotation by itself (``KeyRing.current``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey

ALGORITHM = "ES256"
SIGNING = "signing.jwk"
PREVIOUS = "previous"


def _write_private(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)


def _new_key_data() -> dict[str, Any]:
    key = ECKey.generate_key("P-256", private=True)
    return {**key.as_dict(private=True), "kid": key.thumbprint(), "alg": ALGORITHM, "use": "sig"}


def load_or_create(path: Path) -> ECKey:
    if path.exists():
        return ECKey.import_key(json.loads(path.read_text()))
    data = _new_key_data()
    _write_private(path, data)
    return ECKey.import_key(data)


def _public(key: ECKey) -> dict[str, Any]:
    return {**key.as_dict(private=False), "kid": key.kid, "alg": ALGORITHM, "use": "sig"}


def public_jwks(key: ECKey, previous: list[ECKey] | None = None) -> dict[str, Any]:
    """The JSON Web Key Set the API validates tokens with."""
    return {"keys": [_public(k) for k in [key, *(previous or [])]]}


@dataclass(frozen=True)
class Rotated:
    new_kid: str
    old_kid: str
    retires_at: float


def rotate(directory: Path, *, retire_after_s: float, now: float | None = None) -> Rotated:
    """Move the signing key to ``previous/`` (published until ``now + retire_after_s``)
    and make a new one. The new key file is complete before it replaces the old."""
    now = time.time() if now is None else now
    signing = directory / SIGNING
    old = load_or_create(signing)
    retires_at = now + retire_after_s
    retired = {**json.loads(signing.read_text()), "chargeline_retires_at": retires_at}
    _write_private(directory / PREVIOUS / f"{old.kid}.jwk", retired)
    data = _new_key_data()
    fresh = directory / f".{SIGNING}.new"
    fresh.unlink(missing_ok=True)
    _write_private(fresh, data)
    os.replace(fresh, signing)
    return Rotated(data["kid"], str(old.kid), retires_at)


class KeyRing:
    """The signing key and the published ones, reread when the directory changes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._seen: tuple[float, float] | None = None
        self.signing: ECKey = load_or_create(directory / SIGNING)
        self._previous: list[tuple[ECKey, float]] = []

    def _stamp(self) -> tuple[float, float]:
        previous = self.directory / PREVIOUS
        return (
            (self.directory / SIGNING).stat().st_mtime,
            previous.stat().st_mtime if previous.exists() else 0.0,
        )

    def current(self) -> ECKey:
        """The signing key, reloaded if a rotation happened since the last call."""
        stamp = self._stamp()
        if stamp != self._seen:
            self.signing = load_or_create(self.directory / SIGNING)
            self._previous = []
            for path in sorted((self.directory / PREVIOUS).glob("*.jwk")):
                data = json.loads(path.read_text())
                retires_at = float(data.pop("chargeline_retires_at", 0))
                self._previous.append((ECKey.import_key(data), retires_at))
            self._seen = stamp
        return self.signing

    def jwks(self, now: float | None = None) -> dict[str, Any]:
        """The signing key and each previous key whose tokens may still be valid."""
        now = time.time() if now is None else now
        signing = self.current()
        return public_jwks(signing, [k for k, until in self._previous if until > now])
