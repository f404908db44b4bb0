"""Reads of sessions another host runs (several hosts on Redis, docs/cluster.md).

A part of :class:`~.manager.SessionManager` (which inherits it), kept apart so the
manager's file stays about this host's sessions. The answers come from the
placement's ``remote`` view (cluster/remote.py, fed by the fleet's event stream):
a session this host runs is always answered from the session itself; one it does
not run, from the owner's last published state, with ``host`` the owner and
``stale`` true when that state is not confirmed now. The same ownership rule holds
as for local sessions: a non-admin sees only the sessions its uid owns.
"""

from __future__ import annotations

import builtins
import heapq
from collections.abc import Iterable
from typing import Any

from ...errors import NotFound, PermissionDenied
from ...protocol import SessionStatus, State, Transition
from .caller import Caller
from .placement import Placement
from .session import Session


class RemoteReads:
    placement: Placement
    _sessions: dict[str, Session]

    def _remote(self, session_id: str, caller: Caller) -> SessionStatus | None:
        """Another host's session's status, if ``session_id`` is one (``permission_denied``
        if ``caller`` may not see it); None: this host's session, or no session at all."""
        # No id check here: a hot path (status), and the cache holds only valid ids
        # (cluster/events.py checks them); the local path that follows checks it.
        if session_id in self._sessions:
            return None
        status = self.placement.remote.status(session_id)
        if status is not None:
            if not caller.may_use(status.owner_uid):
                raise PermissionDenied(f"session {session_id!r} belongs to another user", {"session": session_id})
            self.placement.remote.touch(session_id)  # as a read of a local session touches it
        return status

    def _remote_history(self, status: SessionStatus, limit: int) -> builtins.list[Transition]:
        return (self.placement.remote.history(status.session) or [])[-limit:]

    @staticmethod
    def _remote_credential(status: SessionStatus, field: str, what: str) -> Any:
        value = getattr(status, field)
        if value is None:
            raise NotFound(
                f"session {status.session!r} has no {what} (state {status.state.value})",
                {"session": status.session, "state": status.state.value},
            )
        return value

    def _remote_listed(self, states: Iterable[State] | None, caller: Caller) -> builtins.list[SessionStatus]:
        """The remote sessions ``caller`` may see, in ``states`` if given, by id."""
        wanted = set(states) if states else None
        return [
            s for s in self.placement.remote.statuses()
            if s.session not in self._sessions
            and caller.may_use(s.owner_uid)
            and (wanted is None or s.state in wanted)
        ]

    def _remote_visible(self, session_id: str, caller: Caller) -> bool:
        return session_id not in self._sessions and caller.may_use(self.placement.remote.owner_uid(session_id))


def merged(local: Iterable[tuple[str, Any]], remote: Iterable[tuple[str, Any]]) -> builtins.list[Any]:
    """Two lists of (session id, item), each sorted by id, as one list of items sorted by id."""
    return [item for _, item in heapq.merge(local, remote, key=lambda pair: pair[0])]
