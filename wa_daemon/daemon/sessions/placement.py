"""Where sessions live: the manager's one view of the fleet.

One host on its own (:class:`LocalPlacement`, the default) owns every session it
creates. With several hosts on Redis, ``cluster/node.py`` implements this
interface: a new session first takes its lease here, and the fleet calls back
through :class:`Fleet` to hand this host a session (takeover) or take one away
(self-fencing).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from ..._version import __version__
from ...errors import Unavailable
from ...protocol import DrainResult, HostInfo, HostList, SessionStatus, State, Transition
from .caller import ADMIN, Caller
from .hub import Hub
from .registry import SessionRecord
from .states import ACTIVE

__all__ = ["NO_REMOTE", "Fleet", "LocalPlacement", "Placement", "RemoteSessions", "host_info"]


class RemoteSessions(Protocol):
    """The sessions other hosts run, as last heard from the fleet (cluster/remote.py):
    statuses carry ``host`` (the owner) and ``stale`` (not confirmed by the fleet now)."""

    def status(self, session_id: str) -> SessionStatus | None: ...

    def statuses(self) -> Iterator[SessionStatus]:
        """Every remote session's status, by id."""

    def history(self, session_id: str) -> list[Transition] | None: ...

    def owner_uid(self, session_id: str) -> int | None: ...

    def touch(self, session_id: str) -> None:
        """A client read this remote session here (its owner's inactive sweep counts it)."""


class _NoRemote:
    def status(self, session_id: str) -> SessionStatus | None:
        return None

    def statuses(self) -> Iterator[SessionStatus]:
        return iter(())

    def history(self, session_id: str) -> list[Transition] | None:
        return None

    def owner_uid(self, session_id: str) -> int | None:
        return None

    def touch(self, session_id: str) -> None:
        pass


NO_REMOTE: RemoteSessions = _NoRemote()


class Placement(Protocol):
    @property
    def host(self) -> str | None:
        """This host's id in the fleet (``status.host``); None on a host of its own."""

    async def claim(self, session_id: str, owner_uid: int | None = None, caller: Caller = ADMIN) -> SessionRecord | None:
        """Make this host the session's owner before the manager creates it here.
        Returns the fleet's record when the session already exists (adopt it);
        raises ``unavailable`` when another host owns it or the fleet cannot be asked.
        Several hosts: also the fleet's limits for a session ``owner_uid`` creates
        (cluster/limits.py): ``limit_exceeded``, ``permission_denied``."""

    async def hosts(self) -> HostList: ...

    def guard(self) -> None:
        """Called before every read and operation, cheap: a host that was just paused
        (SIGSTOP, a frozen VM) fences what it may no longer run before answering."""

    async def touched_elsewhere(self, session_id: str) -> float | None:
        """Seconds since a client read or watched this host's session through another
        host; None: never, or unknown."""

    async def abandon(self, session_id: str) -> None:
        """The manager made no session of a claim (its row could not be saved): the
        lease goes back."""

    async def attempt(self, session_id: str) -> None:
        """A client's connect is about to start an attempt: ``rate_limited`` if one
        started less than ``connect_min_interval`` ago on another host (one host on
        its own checks its own sessions, in the manager)."""

    async def drain(self, host: str, cancel: bool) -> DrainResult:
        """Ask ``host`` of the fleet to hand its sessions to the others (or not)."""
    @property
    def remote(self) -> RemoteSessions:
        """Other hosts' sessions, for reads; a host of its own has none."""


class Fleet(Protocol):
    """What the manager offers the fleet (cluster/node.py calls it)."""

    def adopt(self, record: SessionRecord) -> bool:
        """Run a session taken over from another host; False if it is here already."""

    def evict(self, session_id: str, reason: str) -> None:
        """Kill the session's browser at once and forget it: this host lost its lease."""

    def peek(self, session_id: str) -> SessionStatus | None: ...

    def counts_by_state(self) -> dict[State, int]: ...

    async def hand_over(self, session_id: str) -> SessionRecord | None:
        """Close the session's browser through a launch slot and forget it here,
        keeping ``should_run``; its record, or None if it is gone or busy (drain)."""
    hub: Hub  # where the fleet's events for this host's watchers go (cluster/fanout.py)


class LocalPlacement:
    """A host on its own: every session it creates is its own."""

    host = None

    async def claim(self, session_id: str, owner_uid: int | None = None, caller: Caller = ADMIN) -> SessionRecord | None:
        return None

    async def hosts(self) -> HostList:
        return HostList([], cluster=False)  # the manager lists itself

    def guard(self) -> None:
        pass

    async def abandon(self, session_id: str) -> None:
        pass

    async def touched_elsewhere(self, session_id: str) -> float | None:
        return None

    async def attempt(self, session_id: str) -> None:
        pass

    async def drain(self, host: str, cancel: bool) -> DrainResult:
        raise Unavailable("this daemon is a host on its own (no redis_url): there is nothing to drain to", {"host": host})
    remote = NO_REMOTE


def host_info(host: str, fleet: Fleet, capacity: int, heartbeat_age: float = 0.0) -> HostInfo:
    counts = fleet.counts_by_state()
    running = sum(n for state, n in counts.items() if state in ACTIVE)
    return HostInfo(host, heartbeat_age, capacity, sum(counts.values()), running, __version__)
