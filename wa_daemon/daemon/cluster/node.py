"""One host's part of the fleet: its leases, its writes, its heartbeat, its takeovers.

:class:`ClusterNode` is the manager's Placement (sessions/placement.py) and calls
the manager back through Fleet (adopt, evict). Its tasks, all in :meth:`run`:

- the ticker asks the lease table every ``renew_every / 4`` what to fence and
  whether to renew; fencing comes first and needs no Redis;
- a renewal (one script for all leases) runs in its own task, bounded by
  ``renew_timeout``, so a slow Redis never delays a fence;
- the writer sends the registry's pending rows through the fenced script;
- every ``renew_every``: the heartbeat, the statuses that changed, and the
  takeover of sessions whose lease expired, while this host has room.
"""

from __future__ import annotations

import math
import os
import socket
from typing import Any

import msgspec
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..._version import __version__
from ...errors import Unavailable
from ...protocol import HostInfo, HostList, SessionStatus
from ..browser.base import Driver
from ..ops.config import Config
from ..ops.log import get_logger
from ..sessions.placement import Fleet, host_info
from ..sessions.registry import SessionRecord
from .lease import FenceReason, LeaseTable, LeaseTiming, parse_token
from .registry import RedisRegistry, encode_record
from .snapshots import AuthSnapshots
from .store import ClusterDataError, ClusterError, HostBeat, RedisStore
from .watchdog import BrowserWatchdog

log = get_logger("cluster")

__all__ = ["ClusterMetrics", "ClusterNode"]


class ClusterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.leases = Gauge("wa_cluster_leases", "session leases this host holds", registry=r)
        self.fenced = Counter(
            "wa_cluster_fenced", "sessions this host stopped because it lost or could not renew the lease",
            ["reason"], registry=r,
        )
        self.takeovers = Counter("wa_cluster_takeovers", "sessions taken over from a host that lost them", registry=r)
        self.redis_errors = Counter(
            "wa_cluster_redis_errors", "Redis calls that failed (unreachable, refused, bad data)", ["op"], registry=r
        )
        self.pending_writes = Gauge("wa_cluster_pending_writes", "registry rows waiting to reach Redis", registry=r)
        for reason in (*FenceReason, "stale"):
            self.fenced.labels(str(getattr(reason, "value", reason)))


class ClusterNode:
    def __init__(self, config: Config, store: RedisStore) -> None:
        self.config = config
        self.store = store
        self.metrics = ClusterMetrics(CollectorRegistry())  # the daemon's own, from attach()
        self.host: str = config.host_id or socket.gethostname()
        self.timing = LeaseTiming(config.lease_ttl)
        self.leases = LeaseTable(self.host, self.timing)
        self.registry = RedisRegistry(self.leases)
        self.fleet: Fleet | None = None
        self._written: dict[str, SessionStatus] = {}  # the status last sent per session
        self._claims: dict[str, trio.Lock] = {}
        self.driver: Driver | None = None  # set by the daemon: auth snapshots export and import through it
        self.snapshots = AuthSnapshots(self)

    def attach(self, fleet: Fleet, metrics: CollectorRegistry) -> None:
        """Serve ``fleet`` (the manager), counting into the daemon's ``metrics``."""
        self.fleet = fleet
        self.metrics = ClusterMetrics(metrics)
        self.metrics.leases.set_function(lambda: len(self.leases.held))
        self.snapshots.attach(metrics)
        self.metrics.pending_writes.set_function(lambda: len(self.registry.pending))

    def reconfigure(self, config: Config) -> None:
        self.config = config  # lease_ttl and host_id need a restart; max_sessions applies now

    # ------------------------------------------------------------------ Placement

    async def claim(self, session_id: str) -> SessionRecord | None:
        lock = self._claims.setdefault(session_id, trio.Lock())
        try:
            async with lock:
                if session_id in self.leases.held:
                    return None
                sent = trio.current_time()
                try:
                    got = await self.store.acquire(session_id, self.host, self.timing.ttl, self.leases.highest_token)
                    if got.outcome == "ok":
                        assert got.value is not None
                        self.leases.acquired(session_id, got.value, sent)
                        return await self._record_of(session_id)
                except ClusterError as exc:
                    self._redis_failed("acquire", exc)
                    raise Unavailable(f"the fleet's Redis cannot be asked: {exc}", {"session": session_id}) from None
                if got.outcome == "held":
                    holder = (got.value or "").partition(" ")[2]
                    raise Unavailable(
                        f"session {session_id!r} runs on host {holder!r}; call that host",
                        {"session": session_id, "host": holder},
                    )
                raise Unavailable(
                    f"Redis restarted: no lease is granted for {got.wait:.1f} s more",
                    {"session": session_id, "retry_after": round(got.wait, 3)},
                )
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._claims.pop(session_id, None)

    async def _record_of(self, session_id: str) -> SessionRecord | None:
        """The fleet's row of a session this host just acquired, as this host can run it."""
        try:
            record = await self.store.record(session_id)
        except ClusterDataError:
            # A row nobody can read: give the lease back, the row stays for an operator.
            value = self.leases.value(session_id)
            self.leases.released(session_id)
            if value is not None:
                await self.store.release(session_id, value)
            raise
        if record is None:
            return record
        return await self.snapshots.restore(record)  # its login, from the auth snapshot

    async def hosts(self) -> HostList:
        try:
            beats, now = await self.store.hosts()
        except ClusterError as exc:
            self._redis_failed("hosts", exc)
            raise Unavailable(f"the fleet's Redis cannot be asked: {exc}") from None
        return HostList(
            [
                HostInfo(b.host, round(max(0.0, (now - b.at_us) / 1e6), 3), b.capacity, b.sessions, b.running, b.version)
                for b in beats
            ],
            cluster=True,
        )

    # ------------------------------------------------------------------ the tasks

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        sessions_dir = getattr(self.driver, "sessions_dir", None)  # browsers with processes: Chromium
        self._watchdog = BrowserWatchdog(sessions_dir) if sessions_dir is not None else None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._upkeep_loop)
                task_status.started()
                self._nursery = nursery
                while True:
                    self.tick()
                    await trio.sleep(self.timing.renew_every / 4)
        finally:
            if self._watchdog is not None:
                self._watchdog.close()

    _nursery: trio.Nursery | None = None
    _watchdog: BrowserWatchdog | None = None
    _last_tick: float | None = None

    def tick(self) -> None:
        """Fence what is due (no Redis needed), then start a renewal if one is due."""
        now = self._last_tick = trio.current_time()
        fence, due = self.leases.tick(now)
        for session, reason in fence:
            self._fence(session, reason.value)
        if due and self._nursery is not None:
            self._nursery.start_soon(self._renew, self.leases.renew_batch(now))
        if self._watchdog is not None:
            # Half a margin after the earliest fence point: only a daemon that cannot
            # fence (stopped, stalled) is ever outlived by it (cluster/watchdog.py).
            sent = min((lease.sent for lease in self.leases.held.values()), default=math.inf)
            self._watchdog.tell(sent + self.timing.ttl - self.timing.margin / 2 - now)

    def guard(self) -> None:
        last = self._last_tick
        if last is not None and trio.current_time() - last > self.timing.pause_gap:
            self.tick()  # resumed from a pause before the ticker's turn: fence first

    async def _renew(self, batch: Any) -> None:
        with trio.move_on_after(self.timing.renew_timeout):
            try:
                results = await self.store.renew(self.timing.ttl, batch.leases)
            except ClusterError as exc:
                self._redis_failed("renew", exc)
                self.leases.renew_failed(batch)
                return
            for session, reason in self.leases.renewed(batch, results):
                self._fence(session, reason.value)
            return
        self._redis_failed("renew", ClusterError(f"no answer in {self.timing.renew_timeout:g} s"))
        self.leases.renew_failed(batch)

    def _fence(self, session: str, reason: str) -> None:
        """Stop the session here; write nothing for it (the lease may be another's)."""
        self.leases.released(session)
        self.registry.pending.pop(session, None)
        self._written.pop(session, None)
        self.snapshots.dropped(session)
        self.metrics.fenced.labels(reason).inc()
        log.warning("cluster_session_fenced", session=session, reason=reason)
        if self.fleet is not None:
            self.fleet.evict(session, reason)

    async def _writer(self) -> None:
        while True:
            await self.registry.wake.wait()
            for session, row in self.registry.take().items():
                await self._send(session, row)

    async def _send(self, session: str, row: SessionRecord | None) -> None:
        value = self.leases.value(session)
        if value is None or not self.leases.may_write(session, trio.current_time()):
            return  # fenced meanwhile: the row is the new owner's business now
        try:
            if row is None:
                await self.snapshots.forget(session, value)  # before the lease goes with the row
                ok = await self.store.delete(session, value)
                if ok:
                    self.leases.released(session)
                    self._written.pop(session, None)
                    self.snapshots.dropped(session)
            else:
                fields = {"record": encode_record(row)}
                status = self._status_of(session)
                if status is not None:
                    fields["status"] = msgspec.json.encode(status)
                ok = await self.store.write(session, value, fields)
                if ok and status is not None:
                    self._written[session] = status
        except ClusterError as exc:
            self._redis_failed("write", exc)
            self.registry.give_back(session, row)
            await trio.sleep(self.timing.renew_every / 4)  # Redis is in trouble: do not spin
            self.registry.wake.set()
            return
        if not ok:
            log.warning("cluster_write_stale", session=session)
            self._fence(session, "stale")

    def _status_of(self, session: str) -> SessionStatus | None:
        return self.fleet.peek(session) if self.fleet is not None else None

    async def _upkeep_loop(self) -> None:
        while True:
            await self.upkeep()
            await trio.sleep(self.timing.renew_every)

    async def upkeep(self) -> None:
        """The heartbeat, the statuses that changed, and takeovers."""
        fleet = self.fleet
        if fleet is None:
            return
        info = host_info(self.host, fleet, self.config.max_sessions)
        beat = HostBeat(
            host=self.host, version=__version__, capacity=info.capacity, sessions=info.sessions,
            running=info.running, lease_ttl=self.timing.ttl, pid=os.getpid(),
        )
        try:
            await self.store.heartbeat(beat, self.timing.ttl)
        except ClusterError as exc:
            self._redis_failed("heartbeat", exc)
            return
        for session in list(self.leases.held):
            status = self._status_of(session)
            if status is not None:
                self.snapshots.observe(session, status, self._nursery)
            if status is not None and status != self._written.get(session) and session not in self.registry.pending:
                value = self.leases.value(session)
                if value is not None and self.leases.may_write(session, trio.current_time()):
                    await self._write_status(session, value, status)
        await self.take_over(info.capacity - info.sessions)

    async def _write_status(self, session: str, value: str, status: SessionStatus) -> None:
        try:
            ok = await self.store.write(session, value, {"status": msgspec.json.encode(status)})
        except ClusterError as exc:
            self._redis_failed("write", exc)
            return
        if ok:
            self._written[session] = status
        else:
            log.warning("cluster_write_stale", session=session)
            self._fence(session, "stale")

    async def take_over(self, room: int) -> int:
        """Acquire sessions whose lease expired, up to ``room`` and at most one launch
        queue's worth per round (the other survivors get their share). Returns how many."""
        room = min(room, self.config.max_concurrent_launches)
        if room <= 0 or self.fleet is None:
            return 0
        try:
            orphans = await self.store.orphans(room)
        except ClusterError as exc:
            self._redis_failed("orphans", exc)
            return 0
        taken = 0
        for session in orphans:
            sent = trio.current_time()
            try:
                got = await self.store.acquire(session, self.host, self.timing.ttl, self.leases.highest_token)
                if got.outcome != "ok":
                    if got.outcome == "held" and got.value:
                        self.leases.saw_token(parse_token(got.value))
                    continue
                assert got.value is not None
                self.leases.acquired(session, got.value, sent)
                record = await self._record_of(session)
            except ClusterError as exc:
                self._redis_failed("takeover", exc)
                continue
            if record is None:  # a lease without a row: nothing to run
                self.leases.released(session)
                continue
            if self.fleet.adopt(record):
                taken += 1
                self.metrics.takeovers.inc()
                log.info("cluster_session_taken_over", session=session, should_run=record.should_run)
        return taken

    def _redis_failed(self, op: str, exc: ClusterError) -> None:
        self.metrics.redis_errors.labels(op).inc()
        log.warning("cluster_redis_error", op=op, error=str(exc))


    # ------------------------------------------------------------------ auth snapshots

    async def before_release(self, session_id: str) -> None:
        """Store the session's auth snapshot before its lease is given up after a clean
        stop (drain, shutdown), so the next owner starts it without a QR."""
        status = self._status_of(session_id)
        if status is None or status.linked:
            await self.snapshots.save(session_id, "release")

    async def save_snapshots(self) -> None:
        """On a clean stop of the daemon: every held session's snapshot, its browser closed."""
        for session in list(self.leases.held):
            await self.before_release(session)
