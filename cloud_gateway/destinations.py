"""Where the cloud may send a partner's webhooks.

A webhook URL is chosen by a partner and fetched by the gateway from inside the cloud's
network; without a check it would reach the cloud's own services (loopback, the private
network, link-local metadata endpoints at 169.254.169.254). A URL is refused when it
carries credentials, or when its host is, or resolves to, an address that is not
globally routable, unless the operator allows it (``webhook_allow_private``, for a
closed network or a test). The check runs when a client is registered and again before
every delivery, since DNS answers change.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")


def _internal(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """What is wrong with ``url`` as a webhook destination, without resolving it."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number in range)
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (user:password@): webhooks are signed instead"
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return "has no host"
    if allow_private:
        return None
    if host == "localhost" or host.endswith(_INTERNAL_SUFFIXES):
        return f"points at an internal host ({host})"
    try:
        internal = _internal(host)
    except ValueError:
        return None  # a name: see resolve_problem
    return f"points at an internal address ({host})" if internal else None


def _addresses(host: str) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)]


def resolve_problem(url: str, *, allow_private: bool) -> str | None:
    """``url_problem``, then: does its host name resolve to an internal address? (A name
    that does not resolve is not refused here: delivery will retry it.)"""
    static = url_problem(url, allow_private=allow_private)
    if static is not None or allow_private:
        return static
    host = (urlsplit(url).hostname or "").rstrip(".")
    try:
        addresses = _addresses(host)
    except (OSError, UnicodeError):
        return None
    inside = [a for a in addresses if _internal(a)]
    return f"{host} resolves to an internal address ({inside[0]})" if inside else None


async def destination_problem(url: str, *, allow_private: bool) -> str | None:
    """``resolve_problem`` before a delivery, without blocking the event loop; a name that
    does not resolve is a (retried) failure here."""
    static = url_problem(url, allow_private=allow_private)
    if static is not None or allow_private:
        return static
    host = (urlsplit(url).hostname or "").rstrip(".")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return f"cannot resolve {host} ({exc})"
    inside = [str(info[4][0]) for info in infos if _internal(str(info[4][0]))]
    if inside:
        return f"refused: {host} resolves to an internal address ({inside[0]})"
    return None
