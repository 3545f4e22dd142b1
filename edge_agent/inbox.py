"""What the cloud sends one controller, decoded and checked: the one place an edge (or the
OCPP bridge, for a station) turns a payload on its ``meter/ack``, ``desired``, ``request``
or ``budget`` topic into a message. A payload that does not decode, or that is addressed to
another controller or outlet than its topic's, is logged and dropped (None): it must
never move a breaker, nor stop the link that carried it.
"""

from __future__ import annotations

import logging
from collections.abc import Container
from typing import TypeVar

from schemas.codec import CodecError, decode
from schemas.messages import Budget, DesiredState, MeterAck, StatusRequest

log = logging.getLogger(__name__)


M = TypeVar("M", MeterAck, Budget)


def _own(cid: str, cls: type[M], payload: bytes, what: str) -> M | None:
    """A message on one of ``cid``'s own topics that names ``cid`` (a meter ack, a budget)."""
    try:
        got = decode(cls, payload)
    except CodecError as exc:
        log.warning("%s: ignoring a bad %s: %s", cid, what, exc)
        return None
    if got.controller_id != cid:
        log.warning("%s: ignoring a %s for %s", cid, what, got.controller_id)
        return None
    return got


def meter_ack(cid: str, payload: bytes) -> MeterAck | None:
    return _own(cid, MeterAck, payload, "meter ack")


def desired(cid: str, outlet: int, payload: bytes, outlets: Container[int]) -> DesiredState | None:
    """The desired state on outlet ``outlet``'s topic, if it is for that outlet of ``cid``
    and the outlet is one of ``outlets``."""
    try:
        want = decode(DesiredState, payload)
    except CodecError as exc:
        log.warning("%s: ignoring a bad desired state for outlet %d: %s", cid, outlet, exc)
        return None
    if want.controller_id != cid or want.outlet != outlet or outlet not in outlets:
        log.warning(
            "%s: ignoring a desired state addressed to %s/%d on outlet %d's topic",
            cid,
            want.controller_id,
            want.outlet,
            outlet,
        )
        return None
    return want


def status_request(cid: str, payload: bytes, outlets: Container[int]) -> StatusRequest | None:
    try:
        request = decode(StatusRequest, payload)
    except CodecError as exc:
        log.warning("%s: ignoring a bad status request: %s", cid, exc)
        return None
    if request.controller_id != cid or request.outlet not in outlets:
        log.warning(
            "%s: ignoring a status request for %s/%d", cid, request.controller_id, request.outlet
        )
        return None
    return request


def budget(cid: str, payload: bytes) -> Budget | None:
    return _own(cid, Budget, payload, "budget")
