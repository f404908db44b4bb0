"""What the simulator's model holds and refuses: its records (a page load, a
linked device, a pairing, a logout) and its errors, each with the HTTP status
the server answers with. Plain data, shared by the model, the engine and the
server; the behaviour lives in ``model``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from .refs import PageKeys, Ref, new_keys

# "code" is the pairing-code screen; "code_expired" the same once its code ran out.
Screen = Literal["qr", "reload", "code", "code_expired", "loading", "app", "conflict", "logged_out"]
DeviceState = Literal["loading", "linked", "conflict", "offline", "hung"]
LogoutSource = Literal["page", "phone"]


class SimError(Exception):
    """A request the simulator refuses; ``status`` is the HTTP status that says why."""

    status = 400


class NotFound(SimError):
    status = 404


class InvalidState(SimError):
    status = 409


class BadRequest(SimError):
    """Malformed input (a phone number, a code, a state name)."""


@dataclass
class Pairing:
    """The code a page shows for a number, until ``deadline``."""

    phone: str
    code: str
    notify: bool
    deadline: float


@dataclass(frozen=True)
class Logout:
    """Why a page lost its login: ``page`` when Socket.logout() ran on it, else ``phone``."""

    source: LogoutSource
    reason: str


@dataclass
class Page:
    """One load of the page in one browser tab; the ref on screen belongs to it."""

    id: str
    keys: PageKeys = field(default_factory=new_keys)  # fixed for the load: only the ref rotates
    screen: Screen = "qr"
    device_id: str | None = None
    ref: Ref | None = None  # kept through "reload": the page leaves the last data-ref in place
    ref_ttl: float = 0.0
    ref_index: int = 0  # position in the current cycle, 0-based
    ref_deadline: float = math.inf
    cycle: int = 0
    loading_started: float = 0.0
    percent: int | None = None
    synced: bool = False  # Socket.hasSynced: the app was reached once on this load
    pairing: Pairing | None = None  # the valid code on the "code" screen
    logout: Logout | None = None
    forced_state: str | None = None  # a fault: Socket.state pinned to this name
    hung: bool = False
    clear_auth: bool = False  # the page must forget its stored token
    streams: int = 0  # open event streams
    close_at: float | None = None
    version: int = 0


@dataclass
class Device:
    """A browser linked by a scan; ``token`` is what its page keeps in localStorage."""

    id: str
    token: str
    linked_at: float  # wall clock, for people
    page_id: str | None = None  # the page holding the session, if one is open
    elsewhere: bool = False  # a (simulated) other window holds the session
    phone_online: bool = True
    online_at: float | None = None
    number: str | None = None  # the phone number it was linked with by a pairing code
