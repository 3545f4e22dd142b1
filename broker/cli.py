"""``chargeline broker …`` and ``chargeline pki …``: run the broker, manage its identities,
issue certificates and export the policy for Mosquitto or EMQX."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.settings import BrokerSettings
from kernel import runner, settings

if TYPE_CHECKING:
    import psycopg

ROLES = ("controller", "station", "ingest", "gateway", "ocpp", "loads")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from broker.settings import BrokerSettings
    from kernel.settings import describe

    broker = sub.add_parser(
        "broker",
        help="the MQTT broker: run it, its identities, exports",
        epilog="listens on: CHARGELINE_BROKER_BIND (default 127.0.0.1:1883), and the TLS and"
        " mTLS binds when set\n\n" + describe(BrokerSettings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    broker.add_argument("--bind", help="host:port to listen on (default 127.0.0.1:1883)")
    broker_sub = broker.add_subparsers(dest="broker_command")

    creds = broker_sub.add_parser("credentials", help="who may connect (passwords)")
    creds_sub = creds.add_subparsers(dest="credentials_command", required=True)
    issue = creds_sub.add_parser(
        "issue", help="new password for NAME (or every registered controller without one)"
    )
    target = issue.add_mutually_exclusive_group(required=True)
    target.add_argument("name", nargs="?", help="controller id, or svc_… for a service")
    target.add_argument("--missing", action="store_true", help="every controller without one")
    issue.add_argument("--role", choices=ROLES, help="default: controller, or from svc_ingest/…")
    revoke = creds_sub.add_parser("revoke", help="shut NAME out (its sessions close at once)")
    revoke.add_argument("name")
    creds_sub.add_parser("list", help="identities, roles and state")

    export = broker_sub.add_parser("export", help="write the policy for a production broker")
    export.add_argument("kind", choices=("mosquitto", "emqx"))
    export.add_argument("--out", type=Path, required=True, help="directory to write")
    export.add_argument(
        "--persistence-dir",
        type=Path,
        help="Mosquitto's persistence_location (default: OUT/data)",
    )
    export.add_argument(
        "--user", default="mosquitto", help="the user Mosquitto runs as (default mosquitto)"
    )
    export.add_argument(
        "--config-dir",
        type=Path,
        help="where the files will live on the broker host, if not OUT (nothing else is"
        " created here)",
    )

    pki = sub.add_parser("pki", help="a local CA for the broker's TLS and mTLS listeners")
    pki.add_argument("--dir", type=Path, help="default: DATA_DIR/pki")
    pki_sub = pki.add_subparsers(dest="pki_command", required=True)
    pki_sub.add_parser("init", help="create the CA")
    server = pki_sub.add_parser("server", help="the broker's certificate")
    server.add_argument("hosts", nargs="+", help="names and addresses clients connect to")
    client = pki_sub.add_parser(
        "client",
        help="a client certificate; CN = NAME. The only one NAME may connect with:"
        " certificates issued to NAME before stop working",
    )
    client.add_argument("name")
    client.add_argument("--role", choices=ROLES)
    client.add_argument("--days", type=int, default=825)


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "pki":
        return _pki(args)
    if args.broker_command is None:
        return _serve(args)
    if args.broker_command == "credentials":
        return _credentials(args)
    return _export(args)


def _connect(*, autocommit: bool = False) -> psycopg.Connection[Any]:
    """The registry's database, its schema up to date (psycopg only when needed: the
    command line also starts edge agents, which do not install it)."""
    import psycopg

    from store.database import prepare_database

    url = prepare_database(settings.load(settings.CommonSettings))
    return psycopg.connect(url, autocommit=autocommit)


def _serve(args: argparse.Namespace) -> int:
    from broker.server import serve
    from store.database import prepare_database

    config = settings.load(BrokerSettings, broker_bind=args.bind)
    url = None if config.broker_allow_anonymous else prepare_database(config)
    return runner.run(serve(config, url))


def _role_of(name: str, role: str | None) -> str:
    if role:
        return role
    if name.startswith("svc_"):
        for known in ROLES:
            if name == f"svc_{known}" or name.startswith(f"svc_{known}-"):
                return known
        raise SystemExit(f"chargeline: say --role for service identity {name!r}")
    return "controller"


def _credentials(args: argparse.Namespace) -> int:
    from broker import identities
    from broker.policy import Role

    with _connect(autocommit=True) as conn:
        if getattr(args, "name", None):
            # An OCPP station may be named by its station id (HV-DC-01) as well.
            args.name = identities.controller_of_station(conn, args.name)
        if args.credentials_command == "list":
            for i in identities.all_identities(conn):
                how = "password" if i.argon2 else "certificate"
                state = "REVOKED" if i.revoked else f"since {i.rotated_at:%Y-%m-%d %H:%M}"
                print(f"{i.name:24} {i.role:10} {how:11} {state}")
            return 0
        if args.credentials_command == "revoke":
            identities.revoke(conn, args.name)
            print(f"{args.name}: revoked; its sessions on the embedded broker close now.")
            print("Mosquitto/EMQX: export again and reload the broker.")
            return 0
        if args.missing:
            issued = identities.issue_missing_controllers(conn)
        else:
            role = Role(_role_of(args.name, args.role))
            issued = [(args.name, identities.issue(conn, args.name, role))]
    for name, password in issued:
        print(f"{name:24} {password}")
    if issued:
        print("Passwords are shown once; only their hashes are stored.")
    else:
        print("every registered controller already has a credential")
    return 0


def _export(args: argparse.Namespace) -> int:
    from broker import export, identities
    from broker.policy import Policy

    config = settings.load(BrokerSettings)
    with _connect() as conn:
        known = identities.all_identities(conn)
        stations = identities.stations(conn)
    common: dict[str, Any] = {
        "policy": Policy(config.topics, stations),
        "identities": known,
        "listeners": export.Listeners.of(config),
        "max_packet_bytes": config.broker_max_packet_bytes,
    }
    if args.kind == "mosquitto":
        written = export.mosquitto(
            args.out,
            **common,
            persistence_dir=args.persistence_dir or args.out / "data",
            user=args.user,
            config_dir=args.config_dir,
        )
    else:
        written = export.emqx(args.out, **common)
    active = sum(not i.revoked for i in known)
    print(f"{args.kind}: {active} identities ({len(known) - active} revoked, left out)")
    for path in written:
        print(f"  wrote {path}")
    return 0


def _pki(args: argparse.Namespace) -> int:
    from broker import identities
    from broker.pki import LocalCA
    from broker.policy import Role

    common = settings.load(settings.CommonSettings)
    ca = LocalCA(args.dir or common.data_dir / "pki")
    if args.pki_command == "init":
        issued = ca.init()
    elif args.pki_command == "server":
        issued = ca.issue_server(args.hosts)
    else:
        with _connect() as conn:
            args.name = identities.controller_of_station(conn, args.name)
        role = Role(_role_of(args.name, args.role))
        identities.check_name(args.name, role)
        with _connect() as conn:  # one transaction: issued and bound
            identities.ensure_certificate_only(conn, args.name, role)
            issued = ca.issue_client(args.name, days=args.days)
            identities.bind_certificate(conn, args.name, role, issued.sha256)
    print(f"certificate {issued.cert}")
    print(f"key         {issued.key} (mode 0600)")
    return 0
