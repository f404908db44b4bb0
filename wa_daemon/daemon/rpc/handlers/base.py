"""What a handler is: one typed function per RPC method, of three kinds.

- :class:`Read`: never waits; served in the connection's read loop, without a
  task of its own (that halves its cost, docs/performance.md).
- :class:`Operation`: may wait (a session's lock, a browser); served in a task
  of its own that the client's ``cancel`` can cancel.
- :class:`Stream`: sends events until it ends, then the connection sends its
  ``end``.

A handler gets the :class:`Services` it acts on, its params (already decoded
as the method's params type in ``METHODS``) and the :class:`Peer` asking.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import msgspec
import trio

from ....errors import Unavailable
from ....protocol import EndReason, Health, SessionStatus, WatchEvent
from ...messages.service import Messaging
from ...sessions.manager import SessionManager
from ..access import Caller, PeerCredentials

P = TypeVar("P", bound=msgspec.Struct)


@dataclass(frozen=True, slots=True)
class Services:
    """What the handlers act on."""

    manager: SessionManager
    health: Callable[[], Awaitable[Health]] | None = None  # None: no health monitor runs
    messages: Messaging | None = None  # None: this daemon keeps no inbox (tests of other parts)

    def messaging(self) -> Messaging:
        if self.messages is None:
            raise Unavailable("this daemon serves no messages")
        return self.messages


class Peer(Protocol):
    """What a handler knows of the connection it serves."""

    @property
    def caller(self) -> Caller:
        """Whose sessions it may see and touch (access.py)."""
        ...

    @property
    def credentials(self) -> PeerCredentials | None:
        """Its SO_PEERCRED identity; None when it could not be read."""
        ...


class Emit(Protocol):
    """Sends one event of a stream."""

    def __call__(self, event: WatchEvent, /) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class Read(Generic[P]):
    method: str
    fn: Callable[[Services, P, Peer], Any]  # the result, synchronously


@dataclass(frozen=True, slots=True)
class Operation(Generic[P]):
    method: str
    fn: Callable[[Services, P, Peer], Awaitable[Any]]  # the result


@dataclass(frozen=True, slots=True)
class Stream(Generic[P]):
    method: str
    # Sends events with the emitter until it ends; ``scope`` is the request's, the
    # one the client's cancel cancels. Returns the end's reason and final status.
    fn: Callable[[Services, P, Peer, Emit, trio.CancelScope], Awaitable[tuple[EndReason, SessionStatus | None]]]


Handler = Read[Any] | Operation[Any] | Stream[Any]
