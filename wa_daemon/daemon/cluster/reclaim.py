"""Sessions whose rows a Redis restart without its data took away (docs/cluster.md,
"Tokens, and a Redis that lost its data").

Such a restart empties ``wa:sessions``: no other host knows the sessions any more.
Their holders fence them (the renewal finds no lease) but remember the last row
each wrote. After the quarantine each holder acquires its own again (the ordinary
atomic ACQUIRE, so still one owner), writes the row back under the new lease and
runs the session. It does so only for a lease lost to a restart: the epoch began
after the lease was last confirmed (at most ``lease_ttl`` before the fence), and the
session is unknown to the fleet (a session another host took over, or deleted, is
not this host's business). Sans I/O: the node asks and acts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..sessions.registry import SessionRecord

__all__ = ["Lost", "Reclaims"]


@dataclass(frozen=True)
class Lost:
    row: SessionRecord
    fenced_at: float  # this host's monotonic clock


@dataclass
class Reclaims:
    ttl: float
    keep_for: float  # after this, a remembered row is forgotten
    lost: dict[str, Lost] = field(default_factory=dict)

    def remember(self, row: SessionRecord, now: float) -> None:
        self.lost[row.session] = Lost(row, now)

    def forget(self, session: str) -> None:
        self.lost.pop(session, None)

    def due(self, now: float, epoch_age: float | None, known: set[str]) -> list[SessionRecord]:
        """The rows to take back now. ``epoch_age``: seconds since Redis's current run
        began (None: not recorded yet, a restart this instant); ``known``: the fleet's
        sessions. Forgets what is no longer this host's to take back."""
        due = []
        for session, lost in list(self.lost.items()):
            since_fence = now - lost.fenced_at
            restarted = epoch_age is None or epoch_age <= since_fence + self.ttl
            if session in known or not restarted or since_fence > self.keep_for:
                del self.lost[session]
            else:
                due.append(lost.row)
        return due
