"""The server half of the wire protocol, sans I/O, beside ``ClientProtocol``.

Like h11: bytes go in (:meth:`ServerProtocol.receive_data`) and events come
out (:meth:`ServerProtocol.next_event`), each one a decision the connection
carries out: answer this, serve that read now, start that operation, cancel
that one. Nothing here touches a socket, a task or a clock; the time comes in
as an argument. ``server.py`` does the I/O each event asks for.

Decided here: hello and the version check; that nothing comes before hello;
request ids (one request in flight per id); cancel; the per-connection caps on
requests in flight and on watch streams; refusing requests while the daemon
drains; when a connection counts as idle.

A broken byte stream (an oversized or truncated frame, anything before hello,
no hello in time) raises :class:`RemoteProtocolError`: the connection cannot go
on, and the server answers it with one error frame (:func:`fatal_error`) and
closes. A well-framed message that does not decode is an event
(:class:`Malformed`): it is answered and the connection goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from ...errors import Busy, LimitExceeded, ProtocolError, Unavailable, WaDaemonError
from ...protocol import (
    PROTOCOL_VERSION,
    Cancel,
    ClientMessage,
    Error,
    FrameDecoder,
    Hello,
    RemoteProtocolError,
    Request,
    Welcome,
)
from .limits import Limits

R = TypeVar("R")


class HelloTimeout(RemoteProtocolError):
    """The peer did not say hello within ``hello_timeout`` (always fatal)."""


# ---------------------------------------------------------------------------- events
#
# Treat them as read-only. They are not frozen: one is made per message, and a
# frozen dataclass's __init__ costs about 0.2 us more (docs/performance.md).


class NeedData:
    """No complete message is buffered: read more bytes."""

    def __repr__(self) -> str:
        return "NEED_DATA"


class Closed:
    """The peer ended the stream between two frames: nothing more will come."""

    def __repr__(self) -> str:
        return "CLOSED"


NEED_DATA: Final = NeedData()
CLOSED: Final = Closed()


@dataclass(slots=True)
class Answer:
    """Send ``message``; then end the connection if ``close``."""

    message: Welcome | Error
    close: bool = False


@dataclass(slots=True)
class Malformed:
    """A well-framed message that did not decode: count it, log it, send ``error``.
    Its ``id`` is the request's when one could be read, else None."""

    error: Error


@dataclass(slots=True)
class Refused:
    """A per-connection limit refused a request: count it under ``limit``, log it,
    and answer ``error`` (an error frame, or raised inside the request's task)."""

    request_id: int
    method: str
    limit: str  # the `limit` label of wa_limit_refusals_total
    maximum: int
    error: WaDaemonError


@dataclass(slots=True)
class ServeInline(Generic[R]):
    """A read: serve it now, in the read loop, before the next message (so
    replies to reads keep request order). ``read`` is its entry in the reads
    the protocol was given."""

    request: Request
    read: R


@dataclass(slots=True)
class StartTask:
    """An operation or a stream: start it in a task of its own. It is in flight
    until :meth:`ServerProtocol.task_done`."""

    request: Request


@dataclass(slots=True)
class CancelTask:
    """The peer cancelled a request that is in flight."""

    request_id: int


Event = NeedData | Closed | Answer | Malformed | Refused | ServeInline[R] | StartTask | CancelTask


def fatal_error(exc: RemoteProtocolError) -> Error:
    """The last frame a connection gets after ``exc``."""
    return Error(None, ProtocolError.code, exc.message)


# ---------------------------------------------------------------------------- the protocol


class ServerProtocol(Generic[R]):
    """One connection's protocol state.

    ``reads`` maps the methods served inline (they never wait) to whatever the
    server needs to serve them; it comes back in :class:`ServeInline`. Any other
    method becomes a :class:`StartTask`, also an unknown one: its task answers
    `invalid_argument`, like a bad params map.
    """

    def __init__(self, limits: Limits, reads: Mapping[str, R], now: float, server_name: str) -> None:
        # Read at each decision, and replaced by the server on a reload. The frame
        # limit and the hello timeout are this connection's from the start.
        self.limits = limits
        self.max_frame = limits.max_frame
        self.hello_timeout = limits.hello_timeout
        self.hello_deadline: float | None = now + limits.hello_timeout  # None once greeted
        self.last_active = now  # the last bytes received, or the last task's end
        self.draining = False  # the daemon is shutting down: requests get `unavailable`
        self.watches = 0  # watch streams open
        self._decoder = FrameDecoder(ClientMessage, limits.max_frame)
        self._reads = reads
        self._server_name = server_name
        self._inflight: set[int] = set()
        self._eof = False
        self._closed = False

    @property
    def greeted(self) -> bool:
        return self.hello_deadline is None

    @property
    def inflight(self) -> int:
        """Requests started as tasks and not done yet (reads are never in flight)."""
        return len(self._inflight)

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the peer; ``b""`` is the end of the stream.
        Raises RemoteProtocolError (FrameTooLarge) at an oversized frame header."""
        self.last_active = now
        if data:
            self._decoder.receive_data(data)
        else:
            self._eof = True

    def check_deadline(self, now: float) -> None:
        """Raise HelloTimeout if ``now`` is past the hello deadline with no hello."""
        if self.hello_deadline is not None and now >= self.hello_deadline:
            raise HelloTimeout(f"no hello within {self.hello_timeout:g} s")

    def task_done(self, request_id: int, now: float) -> None:
        """A task from :class:`StartTask` ended (answered, failed or cancelled)."""
        self._inflight.discard(request_id)
        self.last_active = now

    def open_watch(self, request_id: int, method: str) -> Refused | None:
        """A watch stream is about to start: None lets it (then :meth:`close_watch`
        when it ends). Decided when each stream starts, after its params decoded."""
        limit = self.limits.max_watches_per_connection
        if self.watches >= limit:
            error = LimitExceeded(f"more than {limit} watch streams open on this connection", {"limit": limit})
            return Refused(request_id, method, "watch_streams", limit, error)
        self.watches += 1
        return None

    def close_watch(self) -> None:
        self.watches -= 1

    # ------------------------------------------------------------------ output

    def next_event(self) -> Event[R]:
        """What to do next. Raises RemoteProtocolError when the stream is broken."""
        while not self._closed:
            try:
                msg = self._decoder.next_message()
            except RemoteProtocolError as exc:
                if exc.fatal:
                    raise
                return Malformed(Error(exc.request_id, ProtocolError.code, exc.message))
            if msg is None:
                if not self._eof:
                    return NEED_DATA
                self._decoder.receive_eof()  # raises inside a frame
                self._closed = True
                break
            kind = type(msg)
            if kind is Request:
                return self._request(msg)
            if kind is Hello:
                return self._hello(msg)
            if not self.greeted:
                raise RemoteProtocolError("the first message must be hello")
            assert kind is Cancel
            if msg.id in self._inflight:
                return CancelTask(msg.id)
            # A cancel for a request that already ended (or never was): nothing to do.
        return CLOSED

    def _hello(self, msg: Hello) -> Answer:
        if self.greeted:
            return Answer(Error(None, ProtocolError.code, "hello was already exchanged"))
        if msg.protocol != PROTOCOL_VERSION:
            self._closed = True
            return Answer(
                Error(
                    None,
                    ProtocolError.code,
                    f"unsupported protocol version {msg.protocol}; this daemon speaks {PROTOCOL_VERSION}",
                    {"supported": [PROTOCOL_VERSION]},
                ),
                close=True,
            )
        self.hello_deadline = None
        return Answer(Welcome(PROTOCOL_VERSION, self._server_name, self.max_frame))

    def _request(self, msg: Request) -> Event[R]:
        if not self.greeted:
            raise RemoteProtocolError("the first message must be hello")
        if self.draining:
            return Answer(Error(msg.id, Unavailable.code, "the daemon is shutting down"))
        read = self._reads.get(msg.method)
        if read is not None:
            return ServeInline(msg, read)
        if msg.id in self._inflight:
            return Answer(Error(msg.id, ProtocolError.code, f"request id {msg.id} is already in flight"))
        limit = self.limits.max_inflight_per_connection
        if len(self._inflight) >= limit:
            error = Busy(f"more than {limit} requests in flight on this connection", {"limit": limit})
            return Refused(msg.id, msg.method, "inflight", limit, error)
        self._inflight.add(msg.id)
        return StartTask(msg)

    # ------------------------------------------------------------------ idleness

    def idle_for(self, now: float) -> float:
        """Seconds since the peer last sent something or its last task ended; 0
        before hello (``hello_timeout`` covers that) and while a task is in flight."""
        if not self.greeted or self._inflight:
            return 0.0
        return now - self.last_active

    def idle_expired(self, now: float) -> float | None:
        """How long the connection has been idle, once that reaches
        ``idle_connection_timeout``; None before (or with no such limit)."""
        timeout = self.limits.idle_connection_timeout
        if timeout is None:
            return None
        idle = self.idle_for(now)
        return idle if idle >= timeout else None
