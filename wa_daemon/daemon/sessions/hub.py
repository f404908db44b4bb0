"""The event hub: sessions publish, watch streams subscribe.

Publishing never blocks. Each subscriber has its own bounded mailbox, so a
client that stops reading only ever delays itself: its stale QR codes and
superseded state events are dropped, its final event never is.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ...message_types import MessageAck, MessageReceived
from ...protocol import (
    EndReason,
    PairingCodeUpdated,
    QrCode,
    QrUpdated,
    SessionError,
    SessionStatus,
    State,
    StateChanged,
    WatchEvent,
)


@dataclass(frozen=True)
class StreamEnd:
    """The last item of a watch stream: why it ends, and the session's status then."""

    reason: EndReason
    status: SessionStatus | None


def session_of(event: WatchEvent) -> str:
    if isinstance(event, StateChanged):
        return event.status.session
    if isinstance(event, QrUpdated):
        return event.qr.session
    if isinstance(event, PairingCodeUpdated):
        return event.code.session
    if isinstance(event, SessionError | MessageReceived | MessageAck):
        return event.session
    return event.status.session


class Subscriber:
    def __init__(
        self,
        session: str | None,
        until: frozenset[State],
        queue_size: int,
        qr_interval: float,
        on_drop: Callable[[], None] = lambda: None,
        visible: Callable[[str], bool] | None = None,
        messages: bool = False,
    ) -> None:
        self.session = session
        self.messages = messages  # also the inbox's events (WatchParams.messages)
        # A watch of all sessions by a non-admin: which session ids it may see.
        self.visible = visible
        self.until = until
        self._queue_size = queue_size
        self._qr_interval = qr_interval
        self._on_drop = on_drop
        self._events: deque[WatchEvent] = deque()
        self._qr: dict[str, QrUpdated] = {}
        self._qr_sent_at: dict[str, float] = {}
        self._qr_last: dict[str, QrCode] = {}  # the QR this watcher last saw, per session
        self._final: StreamEnd | None = None
        self._wakeup = trio.Event()
        self.dropped = 0

    def wants(self, session: str) -> bool:
        if self.session is None:
            return self.visible is None or self.visible(session)
        return self.session == session

    @property
    def finished(self) -> bool:
        return self._final is not None

    # -- producer side (synchronous, never blocks) ----------------------------

    def offer(self, event: WatchEvent) -> None:
        if self._final is not None:
            return
        if isinstance(event, QrUpdated):
            if self._qr_last.get(event.qr.session) == event.qr:
                return  # already shown, e.g. in the snapshot that opened the stream
            self._qr[event.qr.session] = event  # only the latest QR is worth showing
        else:
            if isinstance(event, StateChanged) and event.transition.to_state != State.WAITING_QR:
                self._qr.pop(event.status.session, None)  # a QR of a phase that ended is stale
            elif isinstance(event, StateChanged) and event.status.qr is not None:
                self._qr_last[event.status.session] = event.status.qr  # delivered with the state
            self._events.append(event)
            if len(self._events) > self._queue_size:
                self._drop_one()
            if (
                isinstance(event, StateChanged)
                and self.session is not None
                and event.transition.to_state in self.until
            ):
                self._final = StreamEnd("until", event.status)
        self._wake()

    def finish(self, reason: EndReason, status: SessionStatus | None) -> None:
        if self._final is None:
            self._final = StreamEnd(reason, status)
            self._wake()

    def _drop_one(self) -> None:
        """Drop the oldest event that a later event of the same session supersedes."""
        seen_later: set[str] = set()
        victim = None
        for i in range(len(self._events) - 1, -1, -1):
            sid = session_of(self._events[i])
            if sid in seen_later:
                victim = i
            seen_later.add(sid)
        if victim is None:
            victim = 0  # every event is the last word on its session; the oldest goes
        del self._events[victim]
        self.dropped += 1
        self._on_drop()

    def _wake(self) -> None:
        self._wakeup.set()

    # -- consumer side -------------------------------------------------------------

    def _ready_qr(self, now: float) -> tuple[QrUpdated | None, float]:
        """A QR due now (oldest due first), and when the next one falls due."""
        next_due = math.inf
        for sid, ev in self._qr.items():
            due = self._qr_sent_at.get(sid, -math.inf) + self._qr_interval
            if due <= now:
                del self._qr[sid]
                self._qr_sent_at[sid] = now
                self._qr_last[sid] = ev.qr
                return ev, now
            next_due = min(next_due, due)
        return None, next_due

    def mark_qr_sent(self, qr: QrCode, at: float) -> None:
        """Count a QR delivered outside the stream (in a snapshot) against the interval."""
        self._qr_sent_at[qr.session] = at
        self._qr_last[qr.session] = qr

    async def next(self) -> WatchEvent | StreamEnd:
        while True:
            if self._events:
                return self._events.popleft()
            if self._final is not None:
                return self._final
            qr, next_due = self._ready_qr(trio.current_time())
            if qr is not None:
                return qr
            self._wakeup = trio.Event()
            with trio.move_on_at(next_due):
                await self._wakeup.wait()


class Hub:
    def __init__(self, on_count: Callable[[int], None] = lambda n: None) -> None:
        self._subs: set[Subscriber] = set()
        self._on_count = on_count
        # Several hosts (cluster/fanout.py): this host's own events and ends, to publish
        # to the fleet. Events read from the fleet come in through publish_remote, which
        # does not call it: nothing is published twice.
        self.tap: Callable[[WatchEvent], None] | None = None
        self.tap_end: Callable[[str, EndReason, SessionStatus | None], None] | None = None

    def add(self, sub: Subscriber) -> None:
        self._subs.add(sub)
        self._on_count(len(self._subs))

    def remove(self, sub: Subscriber) -> None:
        self._subs.discard(sub)
        self._on_count(len(self._subs))

    def watchers_of(self, session: str) -> int:
        return sum(1 for s in self._subs if s.session == session)

    def watched(self) -> set[str]:
        """The sessions a watcher follows by id (a watch of all sessions names none)."""
        return {s.session for s in self._subs if s.session is not None}

    def publish(self, event: WatchEvent) -> None:
        self.publish_remote(event)
        if self.tap is not None:
            self.tap(event)

    def publish_remote(self, event: WatchEvent) -> None:
        """An event of another host's session, to this host's watchers only."""
        sid = session_of(event)
        inbox = isinstance(event, MessageReceived | MessageAck)
        for sub in list(self._subs):
            if sub.wants(sid) and (sub.messages or not inbox):
                sub.offer(event)

    def finish_session(self, session: str, reason: EndReason, status: SessionStatus | None) -> None:
        self.finish_remote(session, reason, status)
        if self.tap_end is not None:
            self.tap_end(session, reason, status)

    def finish_remote(self, session: str, reason: EndReason, status: SessionStatus | None) -> None:
        for sub in list(self._subs):
            if sub.session == session:
                sub.finish(reason, status)

    def finish_all(self, reason: EndReason, status_of: Callable[[str], SessionStatus | None]) -> None:
        for sub in list(self._subs):
            sub.finish(reason, status_of(sub.session) if sub.session is not None else None)
