"""chargeline's exceptions: one tree, so a caller catches all of ours at once (the CLI does,
and prints one line), and each error carries the context it happened in (``context``:
the controller, topic, file or version concerned).

It lives in the lowest package so that every other may raise from it::

    ChargelineError                    context: what the error concerns, by name
    ├── InputError (ValueError)        bad data from outside, kept for inspection
    │   ├── CodecError                 schemas.codec: a payload that is no valid message
    │   ├── UnknownEvent               schemas.events: an event type not in the contract
    │   ├── RegistryFileError          store.registry_file: every problem, by line
    │   └── (a client's scopes or webhook URL, a login's name: cloud_gateway.clients, store.roles)
    ├── NotFound (LookupError)
    │   ├── UnknownClient              cloud_gateway.clients
    │   └── ChargeNotFound             cloud_gateway.operator
    ├── Refused                        a request that may not be done; the message says why
    │   ├── MigrationRefused           store.migrations: a login that may not migrate
    │   ├── IdentityError              broker.identities
    │   ├── PkiError                   broker.pki
    │   ├── LoginRefused               store.roles: the database would not create a login
    │   └── TokenError                 cloud_gateway.tokens: a refused access token
    ├── LinkError (ConnectionError)    ingest.paho_link: the broker refused a connection
    └── Problem                        cloud_gateway.problems: an API answer (RFC 9457)

The partner API maps the tree to problem documents in one place
(``cloud_gateway.problems``).
"""

from __future__ import annotations

from typing import ClassVar


class ChargelineError(Exception):
    """The base of every chargeline exception. ``context`` names what it concerns."""

    #: The command line's exit status for this error.
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.context = {key: value for key, value in context.items() if value is not None}


class InputError(ChargelineError, ValueError):
    """Bad data from outside (a device, a file, a partner, a command's arguments)."""

    exit_code = 2


class NotFound(ChargelineError, LookupError):
    """No such thing, or none in the state asked for."""


class Refused(ChargelineError):
    """A request that may not be done."""
