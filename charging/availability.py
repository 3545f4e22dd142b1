"""Outlet availability as a change feed: ``outlet.availability`` webhooks, so a partner's
map stays live without polling.

An outlet is available when it is in service, its controller is online and no charge is
active on it (the database view ``outlet_live_status`` says so for every reader). Whatever
can change that (a charge's state, a controller's presence, an outlet's service) marks the
outlet in ``availability_changes`` in the same transaction, by trigger.
``charging.availability_feed.publish`` takes the marked outlets, looks at each one's status
now, and asks ``decide`` (here, pure) against what partners last heard
(``outlet_availability``):

* availability (available or not) unchanged since the last event: nothing is sent, so a
  charge that stops and a new one that starts between two looks send nothing (coalesced);
* changed, but the last event is younger than ``min_gap_s``: the outlet stays marked until
  the gap has passed, and is looked at again then (rate-limited per outlet);
* changed otherwise: one event to every partner with a webhook and the ``sites:read``
  scope, in the same transaction that records it as heard.

An outlet never announced counts as unavailable: registering outlets sends nothing until
their controller comes online. Events carry ``at``; a partner applies one only if it is
newer than the last it applied for the outlet (deliveries are retried independently).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Heard:
    """What partners last heard about an outlet."""

    available: bool
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class Decision:
    send: bool  # publish the outlet's status now
    retry_at: dt.datetime | None  # not yet: look again at this instant


def decide(available: bool, heard: Heard | None, now: dt.datetime, min_gap_s: float) -> Decision:
    """Whether to tell partners that an outlet is (un)available now."""
    before = heard.available if heard is not None else False
    if available == before:
        return Decision(send=False, retry_at=None)
    if heard is not None:
        allowed = heard.at + dt.timedelta(seconds=min_gap_s)
        if now < allowed:
            return Decision(send=False, retry_at=allowed)
    return Decision(send=True, retry_at=None)
