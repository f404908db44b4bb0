"""The browser-driver interface the session actor drives.

A driver launches one browser per session and reports what the page shows as
:class:`PageEvent` values; it knows nothing of states, clients or sockets. The
session maps events onto the state machine. Kept small on purpose: the
scripted driver and the Chromium driver implement exactly this.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import trio

from ...protocol import HealthCheck, Reason
from ...proxy import Proxy

if TYPE_CHECKING:
    from .sandbox import Sandbox

if sys.version_info < (3, 11):  # pragma: no cover - Python 3.10: trio's own dependency
    from exceptiongroup import BaseExceptionGroup


@dataclass(frozen=True)
class PageMessage:
    """A message the page's message collection took as new (isNewMsg): one that arrived,
    or one this account sent (``from_me``). ``text`` is the body of a text message and
    the caption of any other; ``at`` is WhatsApp's timestamp (seconds)."""

    id: str  # WhatsApp's serialized message id: unique, the inbox dedupes by it
    chat: str
    sender: str
    from_me: bool
    type: str
    text: str
    at: int
    ack: int
    mimetype: str | None = None
    size: int | None = None
    filename: str | None = None


@dataclass(frozen=True)
class AckChanged:
    """A message's delivery state changed (WhatsApp's ack)."""

    id: str
    ack: int


MessageEvent = PageMessage | AckChanged


@dataclass(frozen=True)
class SentText:
    """What the page answered to a send: the message's id, its chat and ack then."""

    id: str
    chat: str
    ack: int
    at: int


class SendError(Exception):
    """The page could not send; the message says why (never the text)."""


@dataclass(frozen=True)
class LaunchOptions:
    """Per-launch settings: the session, its page and its proxy."""

    session_id: str
    url: str | None = None  # the page to open; None: the driver's default
    proxy: Proxy | None = None  # every request of the browser goes through it; None: direct
    # Told at once of every message and ack the page reports (the session's inbox).
    on_message: Callable[[MessageEvent], None] | None = None


# ------------------------------------------------------------------ page events


@dataclass(frozen=True)
class LoginRequired:
    """The page needs a login (WhatsApp's UNPAIRED or UNPAIRED_IDLE, or a QR on a page
    read through the DOM fallback). ``idle``: the current QR or code has run out."""

    idle: bool = False


@dataclass(frozen=True)
class QrShown:
    """The page shows a login QR. ``ttl`` is how long the page keeps this ref."""

    ref: str
    ttl: float


@dataclass(frozen=True)
class QrExpired:
    """The refs of one QR cycle ran out; the page offers a reload button."""


@dataclass(frozen=True)
class Loading:
    """A QR was scanned (or saved auth found): the app is loading."""

    percent: int | None = None


@dataclass(frozen=True)
class AppShown:
    """The logged-in app is shown."""


@dataclass(frozen=True)
class LoggedOut:
    """The device was logged out (the phone unlinked it, or WhatsApp did); the saved
    auth is no longer valid. ``reason``: WhatsApp's own, when the page gave one."""

    reason: str | None = None


@dataclass(frozen=True)
class Conflict:
    """WhatsApp is open in another window; the page offers "Use here"."""


@dataclass(frozen=True)
class PhoneOffline:
    """The page lost (True) or regained (False) its connection to WhatsApp."""

    offline: bool


@dataclass(frozen=True)
class Refused:
    """WhatsApp refuses this device: ``kind`` is ``blocked`` or ``deprecated``; ``state``
    is WhatsApp's socket state that says so (e.g. TOS_BLOCK, DEPRECATED_VERSION)."""

    kind: str
    state: str


@dataclass(frozen=True)
class PageInfo:
    """What the page says about itself: WhatsApp's socket state as read (also one we do
    not know: ``unknown`` is then True), its web version, and the contract items missing."""

    web_state: str | None
    unknown: bool
    version: str | None
    missing: tuple[str, ...]


@dataclass(frozen=True)
class BrowserGone:
    """The browser or its page is lost. ``kind``: crashed, exited, cdp_lost, hung, connection_lost."""

    kind: str
    message: str = ""


PageEvent = (
    LoginRequired
    | QrShown
    | QrExpired
    | Loading
    | AppShown
    | LoggedOut
    | Conflict
    | PhoneOffline
    | Refused
    | PageInfo
    | BrowserGone
)


class LaunchError(Exception):
    """The browser could not be started; the message says why, ``reason`` names it
    (``proxy_unreachable`` or ``proxy_auth_failed`` when the session's proxy is why)."""

    def __init__(self, message: str, reason: Reason = Reason.LAUNCH_ERROR) -> None:
        super().__init__(message)
        self.reason = reason


class PairingError(Exception):
    """The page could not give a pairing code; the message says why (never the code)."""


class Browser(Protocol):
    """One running browser of one session."""

    @property
    def events(self) -> trio.MemoryReceiveChannel[PageEvent]:
        """Page events in order. Ends (EndOfChannel) after a BrowserGone or close()."""
        ...

    @property
    def process_group(self) -> int | None:
        """The process group holding the browser's processes (for PSS/CPU
        accounting), or None when there are no processes (scripted driver)."""
        ...

    async def reload_qr(self) -> None:
        """Ask the page for a new QR cycle (WhatsApp's ``Cmd.refreshQR()``)."""

    async def take_over(self) -> None:
        """Take the session back from another window (WhatsApp's ``Socket.takeover()``)."""

    async def request_pairing_code(self, phone_number: str) -> str:
        """Start linking by phone number; returns the 8-character code the phone must
        enter. Raises PairingError when the page cannot give one."""
        ...

    async def logout(self) -> bool:
        """Log out through the page (WhatsApp's ``Socket.logout()``, unlinking the device on
        the phone) and close the browser. True once the page confirmed the logout."""
        ...

    async def new_message_id(self) -> str:
        """A fresh message id from the page (WhatsApp's ``MsgKey.newId()``); SendError
        when the page has no send path."""
        ...

    async def send_text(self, to: str, text: str, message_id: str) -> SentText:
        """Send ``text`` to the chat ``to`` (``<number>@c.us`` or ``<group>@g.us``) as
        the message ``message_id`` (from :meth:`new_message_id`), the way the page sends.
        Raises SendError when the page cannot."""
        ...

    async def close(self) -> None:
        """Close the browser and reap it. Idempotent; never raises; keeps saved auth."""


@contextlib.asynccontextmanager
async def unwrapped_group() -> AsyncIterator[None]:
    """Re-raise what a browser's block raised as it was raised.

    The browser's nursery wraps an exception of the block it encloses (a LaunchError
    on entry, the caller's own error, a cancellation) in an ExceptionGroup; the
    caller of ``open`` should see the exception itself, as if no nursery were there.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from group.exceptions[0].__cause__
        raise



class Driver(Protocol):
    name: str

    def open(self, options: LaunchOptions) -> AbstractAsyncContextManager[Browser]:
        """A browser for a session for the duration of the block: launched on entry
        (raises LaunchError; cancellable), closed and reaped when the block ends, its
        helper tasks with it. Keeps the saved auth."""
        ...

    async def wipe_auth(self, session_id: str) -> None:
        """Forget the saved login of a session (its browser is closed)."""

    async def export_auth(self, session_id: str) -> bytes | None:
        """The session's saved login as a snapshot (browser/auth_snapshot.py) another
        host can import; None when there is none. Safe while its browser runs."""
        ...

    async def import_auth(self, session_id: str, data: bytes, max_bytes: int) -> None:
        """Replace the session's profile by a fresh one holding the snapshot's login (its
        browser is not running). Raises SnapshotError for a snapshot it refuses, having
        written nothing."""

    @property
    def sandbox(self) -> Sandbox | None:
        """How its browsers are confined (browser/sandbox.py); None: it starts no
        browser processes (the scripted driver)."""
        ...

    def health_checks(self) -> list[HealthCheck]:
        """Its own entries in the health report (the Chromium driver's sandbox)."""
        ...


@runtime_checkable
class Simulator(Protocol):
    """A driver that can play the phone's (or fate's) part on its pages: the
    scripted driver. The ``simulate`` RPC needs one."""

    def simulate(self, session_id: str, action: str) -> bool:
        """Act on the session's live page; False when it has no browser running."""
        ...
