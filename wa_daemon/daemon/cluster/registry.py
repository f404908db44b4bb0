"""The manager's Registry, with several hosts: rows in Redis, written under leases.

The manager writes synchronously (``put``, ``remove``) and expects a write it
cannot make to fail at once; Redis is a round trip away. So a write is checked
here against the lease (this host must hold it, verified, before its fence
point, or the write is refused with RegistryError and the manager answers
``unavailable``), then kept as the session's pending row and sent by the node's
writer in the background, through the fenced script. The latest row of a session
replaces any pending one; a row Redis could not take yet stays pending (nothing is
lost while the lease lasts); a row the script refuses (another host holds the
lease now) is dropped, and the session fenced.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import trio

from ..sessions.registry import RegistryError, SessionRecord
from .lease import LeaseTable

__all__ = ["Pending", "RedisRegistry"]

Pending = SessionRecord | None  # None: delete the session's row


class RedisRegistry:
    def __init__(self, leases: LeaseTable, clock: Callable[[], float] = trio.current_time) -> None:
        self._leases = leases
        self._clock = clock
        self.pending: dict[str, Pending] = {}
        self.wake = trio.Event()
        # Why Redis is unreachable right now (the node's last call to it failed), or None.
        self.unreachable: Callable[[], str | None] = lambda: None
        self.rows: dict[str, SessionRecord] = {}  # the last row queued per session (cluster/reclaim.py)

    def load(self) -> list[SessionRecord]:
        # A host starts with no lease: its sessions (and any other host's that lost
        # theirs) come to it through the node's takeover, lease first.
        return []

    def put(self, record: SessionRecord) -> None:
        self._queue(record.session, record)

    def remove(self, session: str) -> None:
        self._queue(session, None)

    def _queue(self, session: str, row: Pending) -> None:
        down = self.unreachable()
        if down is not None:
            # A row queued now could be dropped unsent if this host loses the lease
            # before Redis returns (another host would run the old row): refuse it, so
            # the caller's operation changes nothing and can be retried.
            raise RegistryError(f"the fleet's Redis is unreachable ({down}); nothing was changed, retry later")
        if not self._leases.may_write(session, self._clock()):
            raise RegistryError(
                f"this host does not hold a confirmed lease on session {session!r} "
                "(Redis unreachable, another host took it, or it is being re-checked after a pause)"
            )
        self.pending[session] = row
        if row is None:
            self.rows.pop(session, None)
        else:
            self.rows[session] = row
        self.wake.set()

    def take(self) -> dict[str, Pending]:
        """Everything pending, handed to the writer (which gives back what it could not send)."""
        taken, self.pending = self.pending, {}
        self.wake = trio.Event()
        return taken

    def give_back(self, session: str, row: Pending) -> None:
        """A row Redis did not take: keep it, unless a newer one came meanwhile."""
        self.pending.setdefault(session, row)

    def close(self) -> None:
        pass


def encode_record(record: SessionRecord) -> bytes:
    return msgspec.json.encode(record)
