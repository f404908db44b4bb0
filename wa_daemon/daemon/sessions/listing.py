"""The sessions in id order, and the encoded ``list`` replies kept between calls.

``list`` of thousands of sessions is polled far more often than sessions come
and go or change: the order is sorted again only when a session was added or
removed, and a whole reply is reused while nothing in it can have changed.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
import trio

from ...protocol import State, to_raw
from .caller import ADMIN, Caller
from .session import Session

_MAX_CACHED_CALLERS = 256  # callers come and go: keep the cache bounded


class Listing:
    def __init__(self, sessions: dict[str, Session]) -> None:
        self._sessions = sessions  # the manager's own dict, read here, never changed
        # Every session sorted by id, for the set of ids it was built from.
        self._order: tuple[frozenset[str], list[Session]] | None = None
        # The encoded ``list`` per caller (an admin: every session; a uid: the
        # sessions it owns): (status generation, session count, reply, the
        # sessions' locks). See :meth:`raw`.
        self._caches: dict[Caller, tuple[int, int, msgspec.Raw, list[trio.Lock]]] = {}

    def sorted(self) -> list[Session]:
        """Every session, sorted by id. Shared: callers must not change it."""
        order = self._order
        if order is None or self._sessions.keys() != order[0]:
            ids = frozenset(self._sessions)
            order = self._order = (ids, [self._sessions[sid] for sid in sorted(ids)])
        return order[1]

    def listed(self, states: Iterable[State] | None, caller: Caller = ADMIN) -> list[Session]:
        wanted = set(states) if states else None
        if not caller.admin:
            mine = caller.may_use
            return [s for s in self.sorted() if mine(s.owner_uid) and (wanted is None or s.state in wanted)]
        if wanted is None:
            return self.sorted()
        return [s for s in self.sorted() if s.state in wanted]

    def raw(self, states: Iterable[State] | None, caller: Caller, generation: int) -> msgspec.Raw:
        """The ``list`` result, encoded (a SessionList on the wire), from the bytes
        each session already holds instead of re-encoding every status.

        The list of every session is kept whole between calls: serving it again
        then costs a scan of the locks, not a visit to every session. It stays
        good while the manager's status ``generation`` stays put (no status
        changed and no session was created) and the count holds (none was
        deleted), provided no session is ``busy`` now or was when it was built:
        ``busy`` is the lock's state, not a field, so the locks are checked on
        every call. A non-admin ``caller`` gets the sessions it owns, cached per
        uid the same way.
        """
        if states:
            return to_raw({"sessions": [s.status_raw() for s in self.listed(states, caller)]})
        count = len(self._sessions)
        caches = self._caches
        cached = caches.get(caller)
        if (
            cached is not None
            and cached[0] == generation
            and cached[1] == count
            and not any(map(trio.Lock.locked, cached[3]))
        ):
            return cached[2]
        sessions = self.sorted() if caller.admin else self.listed(None, caller)
        reply = to_raw({"sessions": [s.status_raw() for s in sessions]})
        locks = [s.lock for s in sessions]
        if len(caches) > _MAX_CACHED_CALLERS:
            caches.clear()
        if any(map(trio.Lock.locked, locks)):
            caches.pop(caller, None)
        else:
            caches[caller] = (generation, count, reply, locks)
        return reply
