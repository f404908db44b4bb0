"""The browser-driver interface the session actor drives.

A driver launches one browser per session and reports what the page shows as
:class:`PageEvent` values; it knows nothing of states, clients or sockets. The
session maps events onto the state machine. Kept small on purpose: the
scripted driver and the Chromium driver implement exactly this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio


@dataclass(frozen=True)
class LaunchOptions:
    """Per-launch settings; later drivers read more of these (URL, takeover...)."""

    session_id: str
    url: str | None = None  # the page to open; None: the driver's default


# ------------------------------------------------------------------ page events


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
    """The phone unlinked this device; the saved auth is no longer valid."""


@dataclass(frozen=True)
class Conflict:
    """WhatsApp is open in another window; the page offers "Use here"."""


@dataclass(frozen=True)
class PhoneOffline:
    offline: bool


@dataclass(frozen=True)
class BrowserGone:
    """The browser or its page is lost. ``kind``: crashed, exited, cdp_lost, hung, connection_lost."""

    kind: str
    message: str = ""


PageEvent = QrShown | QrExpired | Loading | AppShown | LoggedOut | Conflict | PhoneOffline | BrowserGone


class LaunchError(Exception):
    """The browser could not be started; the message says why."""


class Browser(Protocol):
    """One running browser of one session."""

    @property
    def events(self) -> trio.abc.ReceiveChannel[PageEvent]:
        """Page events in order. Ends (EndOfChannel) after a BrowserGone or close()."""
        ...

    @property
    def process_group(self) -> int | None:
        """The process group holding the browser's processes (for PSS/CPU
        accounting), or None when there are no processes (scripted driver)."""
        ...

    async def reload_qr(self) -> None:
        """Click the reload button to start a new QR cycle."""

    async def take_over(self) -> None:
        """Answer a conflict with "Use here"."""

    async def logout(self) -> None:
        """Log out from the page (unlinks the device)."""

    async def close(self) -> None:
        """Close the browser and reap it. Idempotent; never raises; keeps saved auth."""


class Driver(Protocol):
    name: str

    async def launch(self, options: LaunchOptions) -> Browser:
        """Start a browser for a session. Raises LaunchError. Cancellable."""
        ...

    async def wipe_auth(self, session_id: str) -> None:
        """Forget the saved login of a session (its browser is closed)."""
