"""``chargeline broker export mosquitto|emqx --out DIR``: the embedded broker's policy,
written for a production broker.

The same identities (``broker/identities.py``) and grants (``broker/policy.py``) become:

- **Mosquitto** (2.0): ``mosquitto.conf``, ``passwords`` (PBKDF2-SHA512 ``$7$`` lines) and
  ``acl`` (``user`` blocks for the services, ``pattern`` lines with ``%u`` for controllers).
  Client ids are forced to the username (``use_username_as_clientid``), so no client can
  take over another's session; on the mTLS listener the username is the certificate's CN.
  After a rotation or revocation, export again and send Mosquitto SIGHUP (``systemctl
  reload mosquitto``): it rereads both files without dropping anyone else.
- **EMQX** (5.x): ``emqx.conf`` (listeners, authentication, authorization, limits),
  ``authn-users.json`` (bootstrap users for the built-in database, PBKDF2-SHA512 with the
  same salts) and ``acl.conf`` (file authorization rules). Untested here: no EMQX on
  these machines.

Revoked identities are left out of the password files. Files holding hashes are written
with mode 0600.
"""

from __future__ import annotations

import json
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from broker.identities import Identity, Pbkdf2
from broker.policy import Access, Policy, Role
from broker.settings import BrokerSettings


@dataclass(frozen=True)
class Listeners:
    """Where the exported broker listens; TLS paths are as the broker host sees them."""

    tcp: str | None
    tls: str | None = None
    mtls: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None

    @classmethod
    def of(cls, settings: BrokerSettings) -> Listeners:
        return cls(
            settings.broker_bind,
            settings.broker_tls_bind,
            settings.broker_mtls_bind,
            settings.broker_cert_file,
            settings.broker_key_file,
            settings.broker_client_ca_file,
        )


def _host_port(bind: str) -> tuple[str, str]:
    host, _, port = bind.rpartition(":")
    return host or "0.0.0.0", port


# --- Mosquitto ------------------------------------------------------------------------------

#: Listener options (Mosquitto takes these per listener even with per_listener_settings off).
_PER_LISTENER = [
    "# the client id is the identity: nobody can take over another controller's session",
    "use_username_as_clientid true",
    "# the wire contract has no QoS 2: a client publishing with it is disconnected",
    "max_qos 1",
]


def mosquitto(
    out: Path,
    *,
    policy: Policy,
    identities: list[Identity],
    listeners: Listeners,
    max_packet_bytes: int,
    persistence_dir: Path,
    user: str = "mosquitto",
    config_dir: Path | None = None,
) -> list[Path]:
    """Write the three files into ``out``. ``config_dir`` is where they will live on the
    broker host, when that is not here (then nothing on this host is created or chowned
    except ``out``)."""
    out.mkdir(parents=True, exist_ok=True)
    here = config_dir is None
    where = out.resolve() if config_dir is None else config_dir
    conf = out / "mosquitto.conf"
    passwords = out / "passwords"
    acl = out / "acl"
    persistence = persistence_dir.resolve() if here else persistence_dir
    lines = _mosquitto_conf(
        user=user,
        passwords=where / passwords.name,
        acl=where / acl.name,
        max_packet_bytes=max_packet_bytes,
        persistence=persistence,
    )
    lines += _mosquitto_listeners(listeners)
    if here:
        persistence_dir.mkdir(parents=True, exist_ok=True)
    conf.write_text("\n".join(lines) + "\n")
    _write_private(
        passwords,
        "".join(f"{i.name}:{i.pbkdf2}\n" for i in _brokers_own(identities) if i.pbkdf2),
    )
    acl.write_text(mosquitto_acl(policy, identities))
    if here:
        _hand_to(user, [passwords, acl, persistence_dir])
    return [conf, passwords, acl]


def _mosquitto_conf(
    *, user: str, passwords: Path, acl: Path, max_packet_bytes: int, persistence: Path
) -> list[str]:
    """mosquitto.conf's general part: the files it reads, limits, persistence, logging."""
    return [
        "# Written by `chargeline broker export mosquitto`: the embedded broker's policy.",
        "# Regenerate after any credential change, then: systemctl reload mosquitto (SIGHUP).",
        "per_listener_settings false",
        "# started as root, Mosquitto drops to this user before it reads the files below",
        f"user {user}",
        "allow_anonymous false",
        f"password_file {passwords}",
        f"acl_file {acl}",
        f"max_packet_size {max_packet_bytes}",
        "set_tcp_nodelay true",
        "# ingest takes every controller's batches through one session: no cap on messages in",
        "# flight to it, and a deep queue while it restarts (the edges resend anything lost)",
        "max_inflight_messages 0",
        "max_queued_messages 1000000",
        "# retained desired states must survive a crash: save the store every second.",
        "# (Saving on every change instead cut QoS 1 throughput from 5,400 to 1,300 msg/s.)",
        "persistence true",
        f"persistence_location {persistence}/",
        "autosave_on_changes false",
        "autosave_interval 1",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
    ]


def _mosquitto_listeners(listeners: Listeners) -> list[str]:
    """One listener block per configured address: plain TCP, TLS, mutual TLS."""
    lines: list[str] = []
    tls = [
        f"certfile {listeners.cert_file}",
        f"keyfile {listeners.key_file}",
        "tls_version tlsv1.2",
    ]
    for bind, about, extra in (
        (listeners.tcp, "plain TCP: only on a physically closed network", []),
        (listeners.tls, "TLS, password authentication", tls),
        (
            listeners.mtls,
            "mutual TLS: a client certificate from the chargeline CA; its CN is the identity",
            [
                *tls,
                f"cafile {listeners.client_ca_file}",
                "require_certificate true",
                "use_identity_as_username true",
            ],
        ),
    ):
        if bind:
            host, port = _host_port(bind)
            lines += ["", f"# {about}", f"listener {port} {host}", *_PER_LISTENER, *extra]
    return lines


def _hand_to(user: str, paths: list[Path]) -> None:
    """Make the files Mosquitto reads (and the directory it writes) its user's."""
    if os.geteuid() != 0 or user == "root":
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return  # no such user here: the operator installs the files where it runs
    for path in paths:
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _brokers_own(identities: list[Identity]) -> list[Identity]:
    """The identities a broker admits: neither revoked nor an OCPP station's (a station
    speaks OCPP to the bridge; its password must not open the broker)."""
    return [i for i in identities if not i.revoked and i.role is not Role.STATION]


def mosquitto_acl(policy: Policy, identities: list[Identity]) -> str:
    words = {Access.READ: "read", Access.WRITE: "write"}
    lines = [
        "# Written by `chargeline broker export mosquitto`. Anything not granted is denied.",
        "",
    ]
    for identity in _brokers_own(identities):
        if identity.role is Role.CONTROLLER:
            continue
        lines.append(f"user {identity.name}")
        lines += [
            f"topic {words[access]} {topic}"
            for access, topic in policy.filters_for(identity.name, identity.role)
        ]
        lines.append("")
    revoked = [i.name for i in identities if i.role is Role.CONTROLLER and i.revoked]
    if revoked:
        lines.append("# revoked: Mosquitto keeps a live session across a reload, so deny it all")
        for name in revoked:
            lines += [f"user {name}", "topic deny #", ""]
    lines.append("# every controller, for its own topics only (%u is the connected identity)")
    lines += [
        f"pattern {words[g.access]} {g.topic_filter}" for g in policy.for_role(Role.CONTROLLER)
    ]
    return "\n".join(lines) + "\n"


# --- EMQX -------------------------------------------------------------------------------------


def emqx(
    out: Path,
    *,
    policy: Policy,
    identities: list[Identity],
    listeners: Listeners,
    max_packet_bytes: int,
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    users_path, acl_path, conf_path = out / "authn-users.json", out / "acl.conf", out / "emqx.conf"
    users = []
    iterations = None
    for identity in _brokers_own(identities):
        if not identity.pbkdf2:
            continue
        parsed = Pbkdf2.parse(identity.pbkdf2)
        iterations = iterations or parsed.iterations
        if parsed.iterations != iterations:
            raise ValueError("EMQX takes one iteration count for all users; re-issue to export")
        users.append(
            {
                "user_id": identity.name,
                "password_hash": parsed.key.hex(),
                "salt": parsed.salt.decode("ascii"),
                "is_superuser": False,
            }
        )
    _write_private(users_path, json.dumps(users, indent=2) + "\n")
    acl_path.write_text(emqx_acl(policy, identities))
    conf_path.write_text(
        _emqx_conf(users_path, acl_path, listeners, max_packet_bytes, iterations or 1000)
    )
    return [conf_path, users_path, acl_path]


def emqx_acl(policy: Policy, identities: list[Identity]) -> str:
    verbs = {Access.READ: "subscribe", Access.WRITE: "publish"}
    lines = ["%% Written by `chargeline broker export emqx`. Anything not granted is denied.", ""]
    for identity in _brokers_own(identities):
        if identity.role is Role.CONTROLLER:
            continue
        for access, topic_filter in policy.filters_for(identity.name, identity.role):
            topic = json.dumps(topic_filter)
            lines.append(f'{{allow, {{user, "{identity.name}"}}, {verbs[access]}, [{topic}]}}.')
    lines.append("%% every controller, for its own topics only")
    for grant in policy.for_role(Role.CONTROLLER):
        topic = json.dumps(grant.topic_filter.replace("%u", "${username}"))
        lines.append(f"{{allow, all, {verbs[grant.access]}, [{topic}]}}.")
    lines.append("{deny, all}.")
    return "\n".join(lines) + "\n"


def _emqx_conf(
    users: Path, acl: Path, listeners: Listeners, max_packet_bytes: int, iterations: int
) -> str:
    parts = [
        "# Written by `chargeline broker export emqx` (EMQX 5). Untested on these machines.",
        "mqtt {",
        f"  max_packet_size = {max_packet_bytes}",
        "  use_username_as_clientid = true",
        "  keepalive_multiplier = 1.5",
        "}",
        "authentication = [{",
        "  mechanism = password_based, backend = built_in_database, user_id_type = username",
        "  password_hash_algorithm {",
        f"    name = pbkdf2, mac_fun = sha512, iterations = {iterations}, dk_length = 64",
        "  }",
        f'  bootstrap_file = "{users.resolve()}", bootstrap_type = hash',
        "}]",
        "authorization {",
        "  no_match = deny, deny_action = disconnect",
        f'  sources = [{{type = file, enable = true, path = "{acl.resolve()}"}}]',
        "}",
    ]
    if listeners.tcp:
        parts.append(f'listeners.tcp.default {{ bind = "{listeners.tcp}" }}')
    if listeners.tls:
        parts.append(
            f'listeners.ssl.default {{ bind = "{listeners.tls}", ssl_options {{'
            f' certfile = "{listeners.cert_file}", keyfile = "{listeners.key_file}" }} }}'
        )
    if listeners.mtls:
        parts.append(
            f'listeners.ssl.mtls {{ bind = "{listeners.mtls}", peer_cert_as_username = cn,'
            f' ssl_options {{ certfile = "{listeners.cert_file}", keyfile = "{listeners.key_file}",'
            f' cacertfile = "{listeners.client_ca_file}", verify = verify_peer,'
            " fail_if_no_peer_cert = true } }"
        )
    return "\n".join(parts) + "\n"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
