"""Limits that keep one client from taking a service from the others.

Pure decisions (``ConnectionBudget``) and the one process setting they depend on
(``raise_file_limit``). The broker and the HTTP servers share them, so a connection cap
means the same thing everywhere.
"""

from __future__ import annotations

import resource
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: File descriptors a process keeps for itself beyond its connections (database, logs,
#: retained store, listening sockets).
RESERVED_FILES = 64


def peer_address(peername: Any) -> str:
    """The source address a connection is counted under (its socket's ``peername``)."""
    return str(peername[0]) if peername else "?"


@dataclass
class ConnectionBudget:
    """Open connections, capped in total and per source address.

    ``admit`` answers why a new connection is refused (None: admitted, and counted until
    ``release``). Addresses with no open connection are forgotten, so a scan of many
    addresses leaves nothing behind.
    """

    total: int
    per_address: int
    _open: Counter[str] = field(default_factory=Counter)
    _count: int = 0

    def __post_init__(self) -> None:
        if self.total < 1 or self.per_address < 1:
            raise ValueError("connection caps must be at least 1")

    @property
    def open(self) -> int:
        return self._count

    def admit(self, address: str) -> str | None:
        if self._count >= self.total:
            return f"the server is at its cap of {self.total} connections"
        if self._open[address] >= self.per_address:
            return f"{self.per_address} connections from this address already"
        self._open[address] += 1
        self._count += 1
        return None

    def release(self, address: str) -> None:
        left = self._open[address] - 1
        if left < 0:
            raise ValueError(f"release of {address!r} without admit")
        if left:
            self._open[address] = left
        else:
            del self._open[address]
        self._count -= 1


def raise_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit; return the limit now.

    Each connection is a file descriptor: a server left at a distribution's default soft
    limit (often 1,024) is locked out by a thousand idle sockets.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(wanted: int, file_limit: int) -> int:
    """The connection cap a process can keep: ``wanted``, or what its file limit allows."""
    return max(1, min(wanted, file_limit - RESERVED_FILES))
