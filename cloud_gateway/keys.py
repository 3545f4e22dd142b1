"""The authorization server's signing key: EC P-256 (ES256), kept in the data directory.

Generated on first use, written with mode 0600, never committed. The key id (``kid``) is
its RFC 7638 thumbprint, so a rotated key gets a new id and the API can tell them apart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey

ALGORITHM = "ES256"


def load_or_create(path: Path) -> ECKey:
    if path.exists():
        return ECKey.import_key(json.loads(path.read_text()))
    key = ECKey.generate_key("P-256", private=True)
    data = {**key.as_dict(private=True), "kid": key.thumbprint(), "alg": ALGORITHM, "use": "sig"}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    return ECKey.import_key(data)


def public_jwks(key: ECKey) -> dict[str, Any]:
    """The JSON Web Key Set the API validates tokens with."""
    public = key.as_dict(private=False)
    return {"keys": [{**public, "kid": key.kid, "alg": ALGORITHM, "use": "sig"}]}
