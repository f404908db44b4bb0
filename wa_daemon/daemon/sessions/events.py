"""What goes into a session's machine and what comes out of it.

Events are what happened: an operation asked for (``Begin``, ``Disconnect``...),
the runner's browser launched or closed, a page event (the browser's own
``PageEvent`` classes), a deadline reached (``Tick``). Effects are what the
session must do about it: publish, log, count, save, start its runner, call
its browser. Both are small frozen classes; ``View`` is the part of a session's
state that its status shows.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from ...protocol import PairingCode, PairingCodeUpdated, QrCode, QrUpdated, Reason, SessionError, State, Transition
from ..browser.base import PageEvent

# ------------------------------------------------------------------ the view and the phase


@dataclass(frozen=True)
class View:
    """The fields a session's status shows, as the machine last left them. Replaced
    (never changed) on every change, so ``view is cached_view`` says a cached status
    is still good."""

    state: State
    since: datetime
    attempt: int = 0  # reconnect attempts in the current incident
    reason: str | None = None
    message: str | None = None
    last_error: str | None = None
    qr: QrCode | None = None
    phone_offline: bool = False
    pairing_code: PairingCode | None = None
    web_version: str | None = None
    web_state: str | None = None
    linked: bool = False  # the profile holds a login: reached connected, not logged out since


class Phase(enum.Enum):
    """What the session's runner task does next."""

    IDLE = "idle"  # no runner task
    LAUNCHING = "launching"  # open a browser (queued for a launch slot), then Launched or LaunchFailed
    DRIVING = "driving"  # follow the open browser's events until the machine closes it
    CLOSING = "closing"  # the browser is closing: BrowserClosed decides what follows
    WIPING = "wiping"  # closed: wipe the saved auth, then AuthWiped
    BACKOFF = "backoff"  # closed: Tick at next_deadline() to relaunch
    DONE = "done"  # nothing left to do: the runner ends


# ------------------------------------------------------------------ events: operations (the caller holds the lock)


@dataclass(frozen=True)
class Begin:
    """connect, or restore after a daemon restart: a new attempt from a restartable state."""

    reason: Reason = Reason.CONNECT_REQUESTED


@dataclass(frozen=True)
class Disconnect:
    """disconnect or delete, once the runner has stopped."""

    message: str


@dataclass(frozen=True)
class IdleTimeout:
    """The sweep stops a connected session nobody touched for its idle timeout."""

    message: str


@dataclass(frozen=True)
class Inactive:
    """The sweep gives up on an active session nobody touched for ``inactive_after``."""

    message: str


@dataclass(frozen=True)
class Shutdown:
    """The daemon is shutting down (the runner has stopped)."""


@dataclass(frozen=True)
class Fenced:
    """Several hosts: this host lost the session's lease (the runner has stopped);
    another host runs it now, or will."""

    message: str


@dataclass(frozen=True)
class LogoutStarted:
    """logout begins; ``browser_open``: the session has a browser to log out of."""

    browser_open: bool


@dataclass(frozen=True)
class LogoutDone:
    """logout: the runner has stopped and the saved auth is wiped."""


@dataclass(frozen=True)
class Recycle:
    """Close a healthy browser on purpose and relaunch it on its saved auth (e.g. a memory limit)."""

    reason: Reason
    message: str


# ------------------------------------------------------------------ events: the runner


@dataclass(frozen=True)
class Launched:
    """The runner's browser is open."""


@dataclass(frozen=True)
class LaunchFailed:
    message: str
    reason: Reason = Reason.LAUNCH_ERROR  # or what the driver named (proxy_unreachable, proxy_auth_failed)


@dataclass(frozen=True)
class BrowserClosed:
    """The browser the machine asked to close (``CloseBrowser``) is closed."""


@dataclass(frozen=True)
class AuthWiped:
    """The saved auth the machine asked to wipe (phase ``wiping``) is gone."""


@dataclass(frozen=True)
class CodeGiven:
    """The page gave the pairing code asked for; ``queued``: page events already
    waiting when it came (an "idle" among them is about the code it replaced)."""

    code: str
    queued: int


@dataclass(frozen=True)
class CodeFailed:
    message: str


@dataclass(frozen=True)
class Tick:
    """``next_deadline()`` has come."""


@dataclass(frozen=True)
class RunnerCrashed:
    """A bug in the runner: the session must end instead of the daemon."""

    message: str


@dataclass(frozen=True)
class RunnerEnded:
    """The runner task is gone, whatever ended it (its end, a crash, a cancel)."""


Operation = Begin | Disconnect | IdleTimeout | Inactive | Shutdown | LogoutStarted | LogoutDone | Recycle | Fenced
RunnerEvent = Launched | LaunchFailed | BrowserClosed | AuthWiped | CodeGiven | CodeFailed | Tick | RunnerCrashed
Event = Operation | RunnerEvent | RunnerEnded | PageEvent


# ------------------------------------------------------------------ effects


@dataclass(frozen=True)
class Transitioned:
    """A transition happened: count it, log it, publish it with the status of ``view``."""

    record: Transition
    view: View


@dataclass(frozen=True)
class Publish:
    event: QrUpdated | PairingCodeUpdated | SessionError


Level = Literal["info", "warning", "error"]
# Counters of DaemonMetrics the machine moves (labels in the counter's order).
Counter = Literal[
    "qr_generated", "qr_events", "pairing_codes", "reconnects", "browser_crashes", "session_recycles",
    "web_unknown_states",
]


@dataclass(frozen=True)
class Log:
    event: str
    level: Level = "info"
    fields: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Count:
    counter: Counter
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class SaveLinked:
    """The profile started or stopped holding a login: the registry must remember it."""


@dataclass(frozen=True)
class Settled:
    """The runner ended in failed or logged_out: stop restarting the session after a restart."""


@dataclass(frozen=True)
class StartRunner:
    """Start the runner task: it launches a browser (phase ``launching``)."""


@dataclass(frozen=True)
class CloseBrowser:
    """Stop following the browser and close it; ``BrowserClosed`` follows."""


# Calls on the live browser, awaited by the session in the order given (always
# the last effects of a list).


@dataclass(frozen=True)
class ReloadQr:
    """Click the page's reload button: a new QR cycle."""


@dataclass(frozen=True)
class TakeOver:
    """Answer "open in another window" with "Use here"."""


@dataclass(frozen=True)
class RequestPairingCode:
    """Ask the page for a pairing code; ``CodeGiven`` or ``CodeFailed`` follows."""

    phone_number: str


@dataclass(frozen=True)
class LogOutPage:
    """Log the open app out (unlinks the device on the phone), bounded by browser_stop_timeout."""


BrowserCall = ReloadQr | TakeOver | RequestPairingCode | LogOutPage
Effect = Transitioned | Publish | Log | Count | SaveLinked | Settled | StartRunner | CloseBrowser | BrowserCall
