"""Sessions that arrive and leave without a client asking: restored at start-up,
adopted from another host, evicted when this host loses their lease.

A part of :class:`~.manager.SessionManager` (which inherits it), kept apart so the
manager's file stays about operations and reads.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable

import trio

from ...protocol import HostList, Reason
from ..ops.config import Config
from ..ops.log import get_logger
from .hub import Hub
from .placement import Placement, host_info
from .registry import Registry, SessionRecord
from .session import Session, SessionContext

log = get_logger("manager")


class Adoption:
    config: Config
    registry: Registry
    placement: Placement
    hub: Hub
    _sessions: dict[str, Session]
    _ctx: SessionContext
    _status_changed: Callable[[], None]
    _record: Callable[[Session, bool], SessionRecord]

    def restore(self) -> int:
        """Recreate the registry's sessions; those that should run start again.

        Starts go through the launch slots like any other, so a restart of many
        sessions queues instead of stampeding. Returns how many were started.
        """
        started = sum(self.adopt(record) and record.should_run for record in self.registry.load())
        if len(self._sessions) > self.config.max_sessions:
            log.warning("restored_over_limit", sessions=len(self._sessions), limit=self.config.max_sessions)
        log.info("sessions_restored", sessions=len(self._sessions), started=started)
        return started

    def adopt(self, record: SessionRecord) -> bool:
        """Recreate a session from its record (a restart, or a takeover from another
        host) and start it if it should run. False if it is here already."""
        if record.session in self._sessions:
            return False
        session = Session(
            record.session, self._ctx, record.owner_uid,
            created_at=record.created_at, options=record.options, linked=record.linked,
        )
        session.should_run = record.should_run
        self._sessions[record.session] = session
        self._status_changed()
        if record.should_run:
            session.begin(Reason.RESTORED)
        return True

    def evict(self, session_id: str, reason: str) -> None:
        """This host lost the session's lease: its browser dies now (SIGKILL to the
        process group, before any orderly close) and the session is forgotten here at
        once, so no read shows it running; the registry is the new owner's."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        self._status_changed()
        kill_group(session.process_group)
        log.warning("session_evicted", session=session_id, reason=reason)
        self._ctx.nursery.start_soon(self._evicted, session, reason)

    async def _evicted(self, session: Session, reason: str) -> None:
        with trio.CancelScope(shield=True):
            await session.fence(f"this host lost the session's lease ({reason}); another host takes it over")
        self.hub.finish_session(session.id, "moved", session.status())

    async def hand_over(self, session_id: str) -> SessionRecord | None:
        """Drain: close the session's browser (through a launch slot, so a drain paces
        like a restart) and forget it here, keeping ``should_run`` for the next owner.
        None if it is gone, or an operation holds it past ``operation_timeout``."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        async with self._ctx.launch_slots:
            with trio.move_on_after(self.config.operation_timeout) as waited:
                await session.lock.acquire()
            if waited.cancelled_caught:
                return None  # an operation holds it: the next drain round tries again
            try:
                if session.deleted or self._sessions.get(session_id) is not session:
                    return None
                await session.shutdown()
                del self._sessions[session_id]
                self._status_changed()
                record = self._record(session, session.should_run)
            finally:
                session.lock.release()
        self.hub.finish_session(session_id, "moved", session.status())
        log.info("session_handed_over", session=session_id, should_run=record.should_run)
        return record

    async def hosts(self) -> HostList:
        """The fleet's hosts; on a host of its own, itself."""
        listed = await self.placement.hosts()
        if listed.cluster:
            return listed
        return HostList([host_info(socket.gethostname(), self, self.config.max_sessions)], cluster=False)  # type: ignore[arg-type]


def kill_group(group: int | None) -> None:
    if group is None:
        return
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone (or not ours to signal: the ordinary close follows)
