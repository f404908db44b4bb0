"""What this host knows of the sessions other hosts run (sans I/O).

Filled from the fleet's event stream (cluster/events.py) and, at start and after
a gap, from the sessions' rows in Redis. Reads of a session this host does not
run are answered from here: its latest status (with ``host``, the owner), its
recent transitions, its current QR or pairing code. While the stream cannot be
read (Redis unreachable, a resync under way) every status read from here is
marked ``stale``; so is a session whose owner's heartbeat is gone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import msgspec

from ...protocol import (
    PairingCodeUpdated,
    QrUpdated,
    SessionStatus,
    State,
    StateChanged,
    Transition,
)
from .events import Entry

__all__ = ["RemoteCache", "RemoteSession"]


@dataclass
class RemoteSession:
    status: SessionStatus
    history: deque[Transition] = field(default_factory=deque)

    @property
    def host(self) -> str | None:
        return self.status.host

    @property
    def owner_uid(self) -> int | None:
        return self.status.owner_uid


class RemoteCache:
    """Sessions of other hosts, by id. ``me``: this host, whose own entries are skipped."""

    def __init__(self, me: str, history_size: int = 100) -> None:
        self.touched: set[str] = set()  # read here since the last upkeep (cluster/interest.py)
        self.me = me
        self.history_size = history_size
        self.sessions: dict[str, RemoteSession] = {}
        self.behind = True  # the stream is not being read (yet, or any more): everything is stale
        self.gone_hosts: set[str] = set()  # owners whose heartbeat was missing at the last check
        self.generation = 0  # bumped on every change, for callers that keep encoded replies

    # ------------------------------------------------------------------ reads

    def stale(self, session: RemoteSession) -> bool:
        return self.behind or session.host in self.gone_hosts

    def status(self, session_id: str) -> SessionStatus | None:
        session = self.sessions.get(session_id)
        if session is None:
            return None
        if self.stale(session) != session.status.stale:
            return msgspec.structs.replace(session.status, stale=not session.status.stale)
        return session.status

    def touch(self, session_id: str) -> None:
        """A client read this remote session here: its owner should know (inactive sweep)."""
        self.touched.add(session_id)

    def statuses(self) -> Iterator[SessionStatus]:
        for session_id in sorted(self.sessions):
            status = self.status(session_id)
            assert status is not None
            yield status

    def owner_uid(self, session_id: str) -> int | None:
        session = self.sessions.get(session_id)
        return None if session is None else session.owner_uid

    def history(self, session_id: str) -> list[Transition] | None:
        session = self.sessions.get(session_id)
        return None if session is None else list(session.history)

    # ------------------------------------------------------------------ writes

    def seed(self, statuses: Iterable[SessionStatus]) -> None:
        """Start over from the sessions' rows (their owners' last written statuses).
        Sessions no row names any more are forgotten; histories are kept."""
        fresh: dict[str, RemoteSession] = {}
        for status in statuses:
            if status.host == self.me:
                continue
            old = self.sessions.get(status.session)
            fresh[status.session] = RemoteSession(
                _clean(status), old.history if old is not None else deque(maxlen=self.history_size)
            )
        self.sessions = fresh
        self.generation += 1

    def note(self, status: SessionStatus) -> None:
        """A status another host answered a routed call with: taken unless what the
        stream brought is as new (``since``: the state's start), so it never goes back."""
        if status.host in (None, self.me):
            return
        current = self.sessions.get(status.session)
        if current is None:
            self.sessions[status.session] = RemoteSession(_clean(status), deque(maxlen=self.history_size))
        elif status.since > current.status.since:
            current.status = _clean(status)
        else:
            return
        self.generation += 1

    def forget(self, session_id: str) -> None:
        """A routed `delete` answered: gone (the stream's `end` follows)."""
        if self.sessions.pop(session_id, None) is not None:
            self.generation += 1

    def apply(self, entry: Entry) -> bool:
        """Take one entry into the cache. True if it is about a session of another host
        (the caller then hands its event to the local watchers)."""
        if entry.host == self.me:
            return False
        self.generation += 1
        if entry.kind == "end":
            self.sessions.pop(entry.session, None)
            return True
        current = self.sessions.get(entry.session)
        if entry.status is not None:
            status = entry.status
        elif isinstance(entry.event, StateChanged):
            status = entry.event.status
        elif current is None:
            return True  # a QR of a session we have no status for: the next state change brings one
        else:
            status = _with_credential(current.status, entry.event)
        if status.host != entry.host:
            status = msgspec.structs.replace(status, host=entry.host)
        if current is None:
            current = self.sessions[entry.session] = RemoteSession(
                _clean(status), deque(maxlen=self.history_size)
            )
        else:
            current.status = _clean(status)
        if isinstance(entry.event, StateChanged) and entry.event.transition not in current.history:
            current.history.append(entry.event.transition)  # (a resync replays what it holds)
        return True


def _clean(status: SessionStatus) -> SessionStatus:
    """As stored: never marked stale (staleness is decided when read)."""
    return msgspec.structs.replace(status, stale=False) if status.stale else status


def _with_credential(status: SessionStatus, event: object) -> SessionStatus:
    if isinstance(event, QrUpdated) and status.state == State.WAITING_QR:
        return msgspec.structs.replace(status, qr=event.qr)
    if isinstance(event, PairingCodeUpdated) and status.state == State.WAITING_CODE:
        return msgspec.structs.replace(status, pairing_code=event.code)
    return status
