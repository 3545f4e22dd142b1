"""The ``chargeline`` command line's arguments: every subcommand and its --help (with the
settings it reads, from its process's settings class)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeAlias

from broker import cli as broker_cli
from cloud_gateway.settings import GatewaySettings
from edge_agent.settings import EdgeSettings
from ingest.settings import IngestSettings
from kernel import settings
from load_manager.settings import LoadSettings
from ocpp_bridge.settings import OcppSettings

DESCRIPTION = "``chargeline``: one command, a subcommand per process."


def _help(settings_cls: type[settings.CommonSettings], listens: str = "") -> dict[str, Any]:
    """``add_parser`` arguments for a subcommand's --help: what it listens on, and every
    setting it reads with its variable and default."""
    epilog = (f"listens on: {listens}\n\n" if listens else "") + settings.describe(settings_cls)
    return {"epilog": epilog, "formatter_class": argparse.RawDescriptionHelpFormatter}


Sub: TypeAlias = (
    "argparse._SubParsersAction[argparse.ArgumentParser]"  # a string: not subscriptable at run time
)


def build() -> argparse.ArgumentParser:
    """The ``chargeline`` command line: one subcommand per process or task."""
    parser = argparse.ArgumentParser(prog="chargeline", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"chargeline {_version()}")
    parser.add_argument(
        "--config", type=Path, help="TOML settings file (environment variables win)"
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, …")
    parser.add_argument(
        "--log-format",
        choices=["plain", "json"],
        help="plain text (default) or one JSON object per line (CHARGELINE_LOG_FORMAT)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    broker_cli.add_parsers(sub)
    _services(sub)
    _db_parser(sub)
    _registry_parser(sub)
    _clients_parser(sub)
    _operators_parser(sub)
    _keys_parser(sub)
    _charges_parser(sub)
    _site_parser(sub)
    _demo_parser(sub)
    return parser


def _services(sub: Sub) -> None:
    """The long-running processes: edge, ingest, ocpp, auth, gateway, webhooks."""
    edge = sub.add_parser(
        "edge",
        help="run an edge agent (simulated outlets)",
        **_help(EdgeSettings, "nothing: it connects to CHARGELINE_MQTT_URL"),
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
        **_help(IngestSettings, "nothing: it subscribes at CHARGELINE_MQTT_URL"),
    )
    ocpp = sub.add_parser(
        "ocpp",
        help="run the OCPP-J endpoint: each OCPP station as one more controller",
        **_help(
            OcppSettings, "CHARGELINE_OCPP_BIND (default 127.0.0.1:9220), path /ocpp/{station_id}"
        ),
    )
    ocpp_sub = ocpp.add_subparsers(dest="ocpp_command")
    frames = ocpp_sub.add_parser(
        "frames", help="what a station really said: the raw OCPP frames, oldest first"
    )
    frames.add_argument("station_id", help="the station's OCPP id")
    frames.add_argument("--since", help="from this time (ISO 8601, e.g. 2026-12-01T09:00Z)")
    frames.add_argument("--until", help="up to this time (ISO 8601)")
    frames.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    sub.add_parser(
        "loads",
        help="run the sites' allocator: budgets that keep every site under its cap",
        **_help(LoadSettings, "nothing: it subscribes at CHARGELINE_MQTT_URL"),
    )
    sub.add_parser(
        "auth",
        help="run the OAuth2 authorization server",
        **_help(GatewaySettings, "CHARGELINE_AUTH_BIND (default 127.0.0.1:8001)"),
    )
    sub.add_parser(
        "webhooks",
        help="run only the webhook deliverer (with gateway_deliver_webhooks=false)",
        **_help(GatewaySettings),
    )
    sub.add_parser(
        "gateway",
        help="run the partner API and the webhook deliverer",
        **_help(GatewaySettings, "CHARGELINE_API_BIND (default 127.0.0.1:8000)"),
    )


def _db_parser(sub: Sub) -> None:
    """``chargeline db …``: the schema, the URL, psql, service logins."""
    db = sub.add_parser("db", help="database schema", **_help(IngestSettings))
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

    login = db_sub.add_parser(
        "login",
        help="create a database login for one service (least privilege); prints its URL once",
    )
    login.add_argument("name", help="the login's name, e.g. cl_gateway")
    login.add_argument(
        "service",
        choices=["broker", "auth", "gateway", "webhooks", "ingest", "ocpp", "loads"],
        help="its grants",
    )


def _registry_parser(sub: Sub) -> None:
    registry = sub.add_parser(
        "registry", help="sites, controllers and outlets", **_help(IngestSettings)
    )
    reg_sub = registry.add_subparsers(dest="registry_command", required=True)
    imp = reg_sub.add_parser(
        "import", help="import a registry file (TOML or YAML); re-importing is safe"
    )
    imp.add_argument("file", type=Path)


def _charges_parser(sub: Sub) -> None:
    """``chargeline charges …``: the operator's actions."""
    charges_parser = sub.add_parser(
        "charges", help="the operator's actions on charges", **_help(GatewaySettings)
    )
    charges_sub = charges_parser.add_subparsers(dest="charges_command", required=True)
    stop = charges_sub.add_parser(
        "stop",
        help="stop a charge as the operator (any client's, also a disabled one's)",
    )
    stop.add_argument("charge_id", help="the client's id for it (with --client) or the system's")
    stop.add_argument("--client", help="the client whose charge id this is")


def _site_parser(sub: Sub) -> None:
    """``chargeline site cap …``: a site's cap (load management)."""
    site = sub.add_parser("site", help="a site's load management", **_help(IngestSettings))
    site_sub = site.add_subparsers(dest="site_command", required=True)
    cap = site_sub.add_parser(
        "cap",
        help="show, set or remove a site's cap (what the building and every outlet may draw)",
    )
    cap_sub = cap.add_subparsers(dest="cap_command", required=True)
    show = cap_sub.add_parser("show", help="the cap in force, the windows and the site's load")
    show.add_argument("site_id")
    set_ = cap_sub.add_parser(
        "set",
        help="set the cap for a window (a demand-response event, maintenance, a solar surplus)",
    )
    set_.add_argument("site_id")
    set_.add_argument("amps", type=float, help="the cap in amperes")
    set_.add_argument("--from", dest="starts", help="from this time (ISO 8601; default now)")
    set_.add_argument("--until", dest="ends", help="until this time (ISO 8601; default: removed)")
    set_.add_argument(
        "--reason",
        default="manual",
        choices=["demand_response", "maintenance", "solar_surplus", "manual"],
        help="why (default manual); only solar_surplus may raise the cap above the contract",
    )
    set_.add_argument("--note", default="", help="a note kept with the window")
    set_.add_argument("--by", help="who sets it (default: cli:$USER)")
    remove = cap_sub.add_parser("remove", help="remove a cap window (the default cap returns)")
    remove.add_argument("site_id")
    remove.add_argument("window_id", type=int)
    remove.add_argument("--by", help="who removes it (default: cli:$USER)")


def _demo_parser(sub: Sub) -> None:
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("chargeline")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _clients_parser(sub: Sub) -> None:
    """``chargeline clients …``: partner applications."""
    clients = sub.add_parser(
        "clients", help="partner applications (OAuth2 clients)", **_help(IngestSettings)
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
    disable = clients_sub.add_parser(
        "disable",
        help="stop a client at once: no tokens (issued ones refused within seconds),"
        " no webhooks; undo with enable",
    )
    disable.add_argument("client_id")
    enable = clients_sub.add_parser("enable", help="let a disabled client back in")
    enable.add_argument("client_id")
    remove = clients_sub.add_parser(
        "remove", help="disable a client for good (its charges stay on record)"
    )
    remove.add_argument("client_id")


def _operators_parser(sub: Sub) -> None:
    """``chargeline operators …``: who may log in to the console."""
    operators = sub.add_parser(
        "operators",
        help="operators of the console (/console on the gateway)",
        **_help(IngestSettings),
    )
    operators_sub = operators.add_subparsers(dest="operators_command", required=True)
    add = operators_sub.add_parser(
        "add",
        help="create an operator; the password is asked twice, or read from one line of"
        " standard input when that is not a terminal (at least 12 characters)",
    )
    add.add_argument("name", help="lower-case letters, digits, '.', '_', '-'")
    add.add_argument(
        "--role",
        choices=["admin", "read-only"],
        required=True,
        help="admin acts (stops charges, acknowledges alarms); read-only only looks",
    )
    operators_sub.add_parser("list", help="every operator: name, role, created, disabled")
    disable = operators_sub.add_parser("disable", help="refuse an operator; their sessions end")
    disable.add_argument("name")
    enable = operators_sub.add_parser("enable", help="let a disabled operator back in")
    enable.add_argument("name")


def _keys_parser(sub: Sub) -> None:
    """``chargeline keys …``: the token signing keys."""
    signing = sub.add_parser(
        "keys",
        help="the authorization server's token signing keys",
        **_help(GatewaySettings),
    )
    keys_sub = signing.add_subparsers(dest="keys_command", required=True)
    rotate_key = keys_sub.add_parser(
        "rotate",
        help="sign with a new key from now on; the old one stays published until the"
        " tokens it signed have expired (the running servers notice by themselves)",
    )
    rotate_key.add_argument(
        "--retire-after",
        type=float,
        metavar="SECONDS",
        help="how long the old key stays published (default: the longest token lifetime"
        " plus the leeway; 0 withdraws it, and every token it signed, at once)",
    )
    keys_sub.add_parser("list", help="the published keys: kid and until when")
