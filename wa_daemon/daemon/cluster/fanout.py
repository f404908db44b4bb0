"""One host's side of the fleet's event stream ``wa:events`` (cluster/events.py has the format).

- **Publishing**: the hub hands this host's events (and the end of a deleted
  session) to :meth:`EventFanout.local_event` synchronously; they wait in a bounded
  queue (a full queue drops the newest entry and counts it: a session never waits
  for Redis) and the writer task XADDs them, capped with ``MAXLEN ~``. Every
  ``renew_every`` the statuses of this host's sessions that changed without an
  event (busy, phone_offline, web_state…) go out too.
- **Tailing**: another task seeds the cache of remote sessions (cluster/remote.py)
  from the sessions' rows, replays the stream (recent history), then reads on with
  ``XREAD BLOCK`` (coredis keeps a blocking command's pooled connection to itself
  until it answers; the block is shorter than the client's reply timeout). Other
  hosts' events go to the local hub's watchers; this host's own are skipped (it
  published them): nothing is published twice. A gap in a publisher's ``seq``
  (this host fell behind the cap) or any Redis failure makes the cache ``behind``
  (reads say ``stale``) until a resync from the rows and the stream succeeds.
- Every ``renew_every`` the owners' heartbeats are checked: a session whose owner
  has none any more reads as stale.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

import coredis
import msgspec
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from ...message_types import MessageAck, MessageReceived
from ...protocol import EndReason, SessionStatus, StateChanged, WatchEvent
from ..ops.log import get_logger
from ..sessions.hub import Hub, session_of
from .events import (
    STREAM,
    STREAM_MAXLEN,
    Entry,
    EventFormatError,
    FleetEvent,
    GapTracker,
    decode_entry,
    decode_error,
    encode_entry,
)
from .remote import RemoteCache
from .store import PREFIX, ClusterError, RedisStore

log = get_logger("cluster")

__all__ = ["QUEUE_SIZE", "EventFanout", "FanoutMetrics"]

# Entries waiting for the writer. A burst of state changes of a few hundred sessions
# fits; beyond that Redis is not keeping up and the newest are dropped (counted).
QUEUE_SIZE = 2000
READ_COUNT = 500  # entries per XREAD / XRANGE


class FanoutMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.published = Counter("wa_cluster_events_published", "events this host added to wa:events", registry=r)
        self.received = Counter(
            "wa_cluster_events_received", "other hosts' events read from wa:events", registry=r
        )
        self.dropped = Counter(
            "wa_cluster_events_dropped", "events this host could not publish (queue full, Redis failed)",
            ["reason"], registry=r,
        )
        self.refused = Counter(
            "wa_cluster_events_refused", "wa:events entries refused as malformed", registry=r
        )
        self.resyncs = Counter(
            "wa_cluster_events_resyncs", "times this host re-read the fleet's state (start, a gap, Redis back)",
            ["reason"], registry=r,
        )
        self.lag = Gauge("wa_cluster_events_lag_seconds", "age of the last wa:events entry when read", registry=r)
        self.stale = Gauge("wa_cluster_events_stale", "1 while this host cannot follow wa:events", registry=r)
        self.remote = Gauge("wa_cluster_remote_sessions", "other hosts' sessions this host knows of", registry=r)
        for reason in ("queue", "redis"):
            self.dropped.labels(reason)
        for reason in ("start", "gap", "redis"):
            self.resyncs.labels(reason)


class _Gap(Exception):
    pass


class EventFanout:
    def __init__(self, host: str, store: RedisStore, period: float, history_size: int = 100) -> None:
        self.host = host
        self.src = f"{host}#{os.urandom(4).hex()}"  # this run: seq restarts with it
        self.store = store
        self.period = period
        self.cache = RemoteCache(host, history_size)
        self.metrics = FanoutMetrics(CollectorRegistry())
        self.hub: Hub | None = None
        self._peek: Callable[[str], SessionStatus | None] = lambda sid: None
        self._local: Callable[[], Collection[str]] = lambda: ()
        self._queue: deque[Entry] = deque()
        self._wake = trio.Event()
        self._seq = 0
        self._sent: dict[str, SessionStatus] = {}  # the status last published per local session
        self._gaps = GapTracker()
        self._last_id = b"0-0"

    def attach(
        self, hub: Hub, peek: Callable[[str], SessionStatus | None], local: Callable[[], Collection[str]],
        metrics: CollectorRegistry,
    ) -> None:
        self.hub = hub
        self._peek, self._local = peek, local
        self.metrics = FanoutMetrics(metrics)
        self.metrics.remote.set_function(lambda: len(self.cache.sessions))
        self.metrics.stale.set_function(lambda: float(self.cache.behind))
        hub.tap, hub.tap_end = self.local_event, self.local_end

    # ------------------------------------------------------------------ publishing

    def local_event(self, event: WatchEvent) -> None:
        if isinstance(event, MessageReceived | MessageAck) or not isinstance(event, FleetEvent):
            return  # message events stay on the owner (docs/cluster.md); snapshots are not events
        session = session_of(event)
        if session not in self._local():
            return  # fenced or handed over: the new owner speaks for it now, not this host
        status = event.status if isinstance(event, StateChanged) else self._peek(session)
        if isinstance(event, StateChanged):
            self._sent[session] = event.status
        self._enqueue("event", session, status, event=event)

    def local_end(self, session: str, reason: EndReason, status: SessionStatus | None) -> None:
        if reason != "deleted":
            return  # "moved": the session goes on elsewhere, its new owner publishes it
        self._sent.pop(session, None)
        self._enqueue("end", session, status, status=status)

    def _enqueue(self, kind: Any, session: str, owner: SessionStatus | None, **payload: Any) -> None:
        if len(self._queue) >= QUEUE_SIZE:
            self.metrics.dropped.labels("queue").inc()
            return
        uid = owner.owner_uid if owner is not None else None
        self._queue.append(Entry(self.host, self.src, 0, kind, session, uid, **payload))
        self._wake.set()

    def sync_statuses(self) -> None:
        """Queue the statuses of this host's sessions that changed since last published."""
        local = set(self._local())
        for session in local:
            status = self._peek(session)
            if status is not None and status != self._sent.get(session):
                self._sent[session] = status
                self._enqueue("status", session, status, status=status)
        for session in self._sent.keys() - local:
            del self._sent[session]  # moved to another host (fenced): its new owner publishes it

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._queue:
                entry = self._queue.popleft()
                self._seq += 1
                entry = Entry(entry.host, entry.src, self._seq, entry.kind, entry.session, entry.uid,
                              entry.event, entry.status)
                try:
                    fields = encode_entry(entry)
                    await self.store._call("xadd", self.store.client.xadd(
                        STREAM, fields, trim_strategy=coredis.PureToken.MAXLEN, threshold=STREAM_MAXLEN,
                        trim_operator=coredis.PureToken.APPROXIMATELY,
                    ))
                except EventFormatError as exc:
                    log.warning("cluster_event_not_published", session=entry.session, error=str(exc))
                    self.metrics.dropped.labels("queue").inc()
                    continue
                except ClusterError as exc:
                    # Lost: readers see the seq jump and resync, which brings the statuses.
                    self.metrics.dropped.labels("redis").inc()
                    log.warning("cluster_redis_error", op="xadd", error=str(exc))
                    self._sent.pop(entry.session, None)  # published again by the next sync
                    continue
                self.metrics.published.inc()

    # ------------------------------------------------------------------ tailing

    async def _tail(self) -> None:
        reason = "start"
        failing = False  # one log line per streak of failures, not one per retry
        while True:
            self.cache.behind = True
            try:
                await self._resync(reason)
                self.cache.behind = False
                if reason != "start":
                    log.info("cluster_events_caught_up", sessions=len(self.cache.sessions), after=reason)
                failing = False
                while True:
                    await self._read_more()
            except _Gap:
                reason = "gap"
                log.warning("cluster_events_gap", last_id=self._last_id.decode())
            except ClusterError as exc:
                reason = "redis"
                if not failing:
                    log.warning("cluster_events_unreadable", error=str(exc))
                failing = True
                await trio.sleep(self.period / 2)

    async def _resync(self, reason: str) -> None:
        self.metrics.resyncs.labels(reason).inc()
        store = self.store
        statuses = []
        for session in await store.session_ids():
            key = store.session_key(session)
            try:
                data = await store._call("read", store.client.hget(key, "status"))
                if data is None:
                    continue
                statuses.append(msgspec.json.decode(data, type=SessionStatus))
            except msgspec.DecodeError as exc:
                self._refused(key, f"its status is not valid: {decode_error(exc)}")
            except ClusterError as exc:
                if "Redis refused" not in str(exc):
                    raise  # Redis itself is in trouble: retry the whole resync
                self._refused(key, str(exc))  # a key of another type: skip that session
        self.cache.seed(statuses)
        self._gaps.reset()
        # Replay what the stream still holds: recent history, and whatever happened
        # after the rows were written. Watchers get none of it (it is the past).
        start = b"-"
        while True:
            entries = await store._call("xrange", store.client.xrange(STREAM, start, b"+", count=READ_COUNT))
            for entry in entries:
                self._take(entry, live=False)
            if len(entries) < READ_COUNT:
                break
            start = b"(" + self._last_id

    async def _read_more(self) -> None:
        block = max(10, int(self.period * 250))  # well within the client's reply timeout (period)
        reply = await self.store._call(
            "xread", self.store.client.xread({STREAM: self._last_id}, count=READ_COUNT, block=block)
        )
        for entries in (reply or {}).values():
            for entry in entries:
                self._take(entry, live=True)

    def _take(self, raw: Any, *, live: bool) -> None:
        ident = raw.identifier if isinstance(raw.identifier, bytes) else str(raw.identifier).encode()
        self._last_id = ident
        try:
            entry = decode_entry(raw.field_values)
        except EventFormatError as exc:
            self._refused(f"{STREAM} {ident.decode(errors='replace')[:40]}", str(exc))
            return
        if not self._gaps.saw(entry.src, entry.seq) and live:
            raise _Gap
        if entry.host == self.host:
            self.cache.sessions.pop(entry.session, None)  # ours now (taken over): not remote
            return
        if live:
            ms = ident.partition(b"-")[0]
            if ms.isdigit():
                self.metrics.lag.set(max(0.0, time.time() - int(ms) / 1000))
        if not self.cache.apply(entry) or not live:
            return
        self.metrics.received.inc()
        hub = self.hub
        if hub is None:
            return
        if entry.kind == "end":
            hub.finish_remote(entry.session, "deleted", entry.status)
        elif entry.event is not None:
            hub.publish_remote(entry.event)

    def _refused(self, where: str, error: str) -> None:
        self.metrics.refused.inc()
        log.warning("cluster_event_refused", key=where, error=error)

    # ------------------------------------------------------------------ upkeep

    async def _check_hosts(self) -> None:
        owners = {s.host for s in self.cache.sessions.values() if s.host is not None}
        gone = set()
        for host in owners:
            if not await self.store._call("hosts", self.store.client.exists([f"{PREFIX}host:{host}"])):
                gone.add(host)
        self.cache.gone_hosts = gone

    async def _upkeep(self) -> None:
        while True:
            self.sync_statuses()
            try:
                await self._check_hosts()
            except ClusterError:
                pass  # the tailer notices the same trouble and says so
            await trio.sleep(self.period)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer)
            nursery.start_soon(self._tail)
            nursery.start_soon(self._upkeep)
