"""One host's part of the fleet: its leases, its writes, its heartbeat, its takeovers.

:class:`ClusterNode` is the manager's Placement (sessions/placement.py) and calls
the manager back through Fleet (adopt, evict). Its tasks, all in :meth:`run`:

- the ticker asks the lease table every ``renew_every / 4`` what to fence and
  whether to renew; fencing comes first and needs no Redis;
- a renewal (one script for all leases) runs in its own task, bounded by
  ``renew_timeout``, so a slow Redis never delays a fence;
- the writer sends the registry's pending rows through the fenced script;
- every ``renew_every``: the heartbeat, the statuses that changed, and the
  takeover of sessions whose lease expired, while this host has room; between
  upkeeps more takeover rounds as launch slots free (cluster/takeover.py).
"""

from __future__ import annotations

import math
import os
import secrets
import socket
from typing import Any

import msgspec
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..._version import __version__
from ...errors import Unavailable, WaDaemonError
from ...protocol import DrainResult, HostInfo, HostList, SessionStatus
from ..browser.base import Driver
from ..ops.config import Config
from ..ops.log import get_logger
from ..sessions.caller import ADMIN, Caller
from ..sessions.placement import Fleet, host_info
from ..sessions.registry import SessionRecord
from .drain import Drain, drain_before_stop, start_round
from .fanout import EventFanout
from .interest import Interest
from .join import JoinRefused, check_join
from .lease import FenceReason, LeaseTable, LeaseTiming
from .limits import LimitMetrics, SharedLimits
from .pace import TakeoverPace
from .reclaim import Reclaims
from .registry import RedisRegistry, encode_record
from .remote import RemoteCache
from .snapshots import AuthSnapshots
from .store import ClusterDataError, ClusterError, HostBeat, RedisStore
from .takeover import REFUSED_RETRY, chase, take_over
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
        self.host_id_conflicts = Counter(
            "wa_cluster_host_id_conflicts", "heartbeats of this host_id written by another live daemon", registry=r
        )
        self.join_refused = Counter(
            "wa_cluster_join_refused", "join checks that refused this daemon (host_id in use, lease_ttl)", registry=r
        )
        self.unreachable = Gauge(
            "wa_cluster_redis_unreachable_seconds",
            "how long this host's calls to Redis have been failing; 0 while its last call answered", registry=r,
        )
        self.reclaimed = Counter(
            "wa_cluster_reclaimed", "sessions this host took back after a Redis restart lost their rows", registry=r
        )
        self.data_refused = Counter(
            "wa_cluster_data_refused", "data in Redis this host refused (a wrong type, a bad field), by key family",
            ["key"], registry=r,
        )


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
        self.limits = SharedLimits(store)  # the fleet-wide limits (cluster/limits.py)
        self.drainer = Drain(store, self.host)  # drain (cluster/drain.py)
        self.fanout = EventFanout(self.host, store, self.timing.renew_every, config.history_size)
        self._refused = {}
        self.instance = secrets.token_hex(8)  # this process, in the heartbeat (cluster/join.py)
        self.joined = False  # the join checks passed (or could not run yet: see upkeep)
        self.join_refused: str | None = None
        self._beats = 0
        self._down: tuple[float, str] | None = None  # since when Redis fails, and the last error
        self.reclaims = Reclaims(self.timing.ttl, keep_for=REFUSED_RETRY * self.timing.ttl)
        self.driver: Driver | None = None  # set by the daemon: auth snapshots export and import through it
        self.snapshots = AuthSnapshots(self)
        self.interest = Interest(store)  # reads and watches of other hosts' sessions (cluster/interest.py)
        self.pace = TakeoverPace()  # orphans may be left: take more as launch slots free
        self.taking = trio.Lock()  # one takeover round at a time (upkeep's, chase's)

    def attach(self, fleet: Fleet, metrics: CollectorRegistry) -> None:
        """Serve ``fleet`` (the manager), counting into the daemon's ``metrics``."""
        self.fleet = fleet
        self.metrics = ClusterMetrics(metrics)
        self.metrics.leases.set_function(lambda: len(self.leases.held))
        self.snapshots.attach(metrics)
        self.metrics.pending_writes.set_function(lambda: len(self.registry.pending))
        self.limits.metrics = LimitMetrics(metrics)
        self.drainer.attach(metrics)
        self.fanout.attach(fleet.hub, fleet.peek, lambda: self.leases.held, metrics)
        self.store.on_refused = lambda exc: self._redis_failed("read", exc)
        self.registry.unreachable = self.redis_unreachable
        self.metrics.unreachable.set_function(
            lambda: 0.0 if self._down is None else trio.current_time() - self._down[0]
        )

    def reconfigure(self, config: Config) -> None:
        self.config = config  # lease_ttl and host_id need a restart; max_sessions applies now

    # ------------------------------------------------------------------ Placement

    async def claim(self, session_id: str, owner_uid: int | None = None, caller: Caller = ADMIN) -> SessionRecord | None:
        if self.join_refused is not None:
            raise Unavailable(f"this host may not join the fleet: {self.join_refused}", {"session": session_id})
        if not self.joined:  # its join checks could not run yet (Redis): it may be a second daemon of its host id
            raise Unavailable(
                "this host has not joined the fleet yet (Redis could not be asked)",
                {"session": session_id, "retry_after": round(self.timing.renew_every, 3)},
            )
        if self.drainer.draining:
            raise Unavailable(
                f"host {self.host!r} is draining: it takes no new session; call another host",
                {"session": session_id, "host": self.host},
            )
        lock = self._claims.setdefault(session_id, trio.Lock())
        try:
            async with lock:
                # Held here: made meanwhile by a concurrent connect (the manager finds it),
                # or deleted or handed over a moment ago (its release is on its way). Never
                # a new session on that lease: wait for the release.
                with trio.move_on_after(self.timing.renew_timeout):
                    while session_id in self.leases.held and not self._runs(session_id):
                        await trio.sleep(0.01)
                if self._runs(session_id):
                    return None
                if session_id in self.leases.held:
                    raise Unavailable(
                        f"session {session_id!r} is being deleted or handed over on this host; retry",
                        {"session": session_id, "host": self.host, "retry_after": round(self.timing.renew_every, 3)},
                    )
                sent = trio.current_time()
                try:
                    got = await self.store.acquire(session_id, self.host, self.timing.ttl, self.leases.highest_token)
                    self._redis_answered()
                    if got.outcome == "ok":
                        assert got.value is not None
                        self.leases.acquired(session_id, got.value, sent)
                        try:
                            # the fleet's limits first: a caller refused must not restore the login here
                            record = await self._read_record(session_id)
                            await self._admit(session_id, got.value, owner_uid, caller)
                            return await self._restored(session_id, record)
                        except BaseException:
                            # Refused, failed or cancelled (a client gone, a routed command's
                            # budget): no session is made of it, so the lease must not stay
                            # here, renewed for nobody (the next claim would skip the checks).
                            await self.abandon(session_id)
                            raise
                except ClusterDataError as exc:
                    self._redis_failed("acquire", exc)
                    raise Unavailable(
                        f"the fleet's data for this session is refused: {exc}", {"session": session_id, "key": exc.key}
                    ) from None
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

    def _runs(self, session_id: str) -> bool:
        return self.fleet is not None and self.fleet.peek(session_id) is not None

    async def _record_of(self, session_id: str) -> SessionRecord | None:
        """The fleet's row of a session this host just acquired, as this host can run it."""
        return await self._restored(session_id, await self._read_record(session_id))

    _drain_cleared = False

    async def _clear_own_drain(self) -> None:
        """A host that starts takes sessions again: its old drain request goes, once."""
        try:
            await self.drainer.clear_own()
            self._drain_cleared = True
        except ClusterError as exc:
            self._redis_failed("drain", exc)

    async def touched_elsewhere(self, session_id: str) -> float | None:
        try:
            return await self.interest.elapsed(session_id)
        except ClusterError as exc:
            self._redis_failed("touch", exc)
            return None  # unknown: the sweep decides as a host on its own would

    async def _note_interest(self, fleet: Fleet) -> None:
        """Tell the owners which of their sessions clients read or watch through this host."""
        cache = self.fanout.cache
        seen, cache.touched = cache.touched, set()
        self.interest.note(s for s in seen | fleet.hub.watched() if s in cache.sessions)
        try:
            await self.interest.flush()
        except ClusterError as exc:
            self._redis_failed("touch", exc)

    async def abandon(self, session_id: str) -> None:
        """Give back a lease held for no session (shielded: also for a cancelled claim)."""
        value = self.leases.value(session_id)
        self.leases.released(session_id)
        self.registry.rows.pop(session_id, None)
        if value is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(self.timing.renew_timeout):
            try:
                await self.store.release(session_id, value)
            except ClusterError as exc:
                self._redis_failed("release", exc)

    async def _read_record(self, session_id: str) -> SessionRecord | None:
        try:
            record = await self.store.record(session_id)
        except ClusterDataError:
            # A row nobody can read: give the lease back, the row stays for an operator.
            value = self.leases.value(session_id)
            self.leases.released(session_id)
            if value is not None:
                await self.store.release(session_id, value)
            raise
        return record

    async def _restored(self, session_id: str, record: SessionRecord | None) -> SessionRecord | None:
        if record is None:
            return record
        self.registry.rows[session_id] = record
        return await self.snapshots.restore(record)  # its login, from the auth snapshot

    async def hosts(self) -> HostList:
        try:
            beats, now = await self.store.hosts()
        except ClusterError as exc:
            self._redis_failed("hosts", exc)
            raise Unavailable(f"the fleet's Redis cannot be asked: {exc}") from None
        return HostList(
            [
                HostInfo(
                    b.host, round(max(0.0, (now - b.at_us) / 1e6), 3), b.capacity, b.sessions, b.running, b.version,
                    b.draining,
                )
                for b in beats
            ],
            cluster=True,
        )

    # ------------------------------------------------------------------ the tasks

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        # Before the first heartbeat: a refusal at start stops the daemon (EX_CONFIG);
        # a Redis that cannot answer yet leaves the checks to the first upkeep.
        if not await self.join():
            log.warning("cluster_join_unchecked", host=self.host)
        await self._clear_own_drain()
        sessions_dir = getattr(self.driver, "sessions_dir", None)  # browsers with processes: Chromium
        self._watchdog = BrowserWatchdog(sessions_dir) if sessions_dir is not None else None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._upkeep_loop)
                nursery.start_soon(self.fanout.run)
                nursery.start_soon(chase, self)
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
            self._redis_answered()
            for session, reason in self.leases.renewed(batch, results):
                self._fence(session, reason.value)
            return
        self._redis_failed("renew", ClusterError(f"no answer in {self.timing.renew_timeout:g} s"))
        self.leases.renew_failed(batch)

    def _fence(self, session: str, reason: str) -> None:
        """Stop the session here; write nothing for it (the lease may be another's)."""
        self.leases.released(session)
        row = self.registry.rows.pop(session, None)
        if reason == FenceReason.LOST.value and row is not None:
            self.reclaims.remember(row, trio.current_time())  # in case Redis lost its data
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
            # Redis is in trouble, or a key is broken until an operator fixes it: do not spin.
            data = isinstance(exc, ClusterDataError)
            await trio.sleep(self.timing.renew_every / (1 if data else 4))
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

    async def join(self) -> bool:
        """Run the join checks (cluster/join.py); False if Redis could not be asked."""
        try:
            with trio.fail_after(self.timing.ttl):
                await check_join(self.store, self.host, self.instance, self.timing)
        except JoinRefused as exc:
            self.join_refused = str(exc)
            self.metrics.join_refused.inc()
            log.error("cluster_join_refused", host=self.host, error=str(exc))
            raise
        except (ClusterError, trio.TooSlowError) as exc:
            self._redis_failed("join", exc if isinstance(exc, ClusterError) else ClusterError("no answer"))
            return False
        self.joined = True
        return True

    async def upkeep(self) -> None:
        """The heartbeat, the statuses that changed, and takeovers."""
        fleet = self.fleet
        if fleet is None or self.join_refused is not None:
            return  # refused: no heartbeat (it would overwrite the other daemon's), no sessions
        if not self.joined:
            try:
                if not await self.join():
                    return
            except JoinRefused:
                return
        info = host_info(self.host, fleet, self.config.max_sessions)
        beat = HostBeat(
            host=self.host, version=__version__, capacity=info.capacity, sessions=info.sessions,
            running=info.running, lease_ttl=self.timing.ttl, pid=os.getpid(), instance=self.instance,
        )
        try:
            if not self._drain_cleared:
                await self._clear_own_drain()  # Redis was down at start: before the first poll
            if await self.drainer.poll():
                beat = msgspec.structs.replace(beat, draining=True)
            previous = await self.store.heartbeat(beat, self.timing.ttl)
        except ClusterError as exc:
            self._redis_failed("heartbeat", exc)
            return
        self._redis_answered()
        if self._beats and previous not in ("", self.instance):
            # Another live process wrote this host's heartbeat since our last one: both
            # started at once, past the join check. Their leases stay apart (every lease
            # value carries its own token), but routing by host id cannot tell them apart.
            self.metrics.host_id_conflicts.inc()
            log.error("cluster_host_id_conflict", host=self.host, other_instance=previous, instance=self.instance)
        self._beats += 1
        await self._note_interest(fleet)
        for session in list(self.leases.held):
            status = self._status_of(session)
            if status is not None:
                self.snapshots.observe(session, status, self._nursery)
            if status is not None and status != self._written.get(session) and session not in self.registry.pending:
                value = self.leases.value(session)
                if value is not None and self.leases.may_write(session, trio.current_time()):
                    await self._write_status(session, value, status)
        if self.drainer.draining:
            start_round(self)
            return
        taken = await self.take_over(info.capacity - info.sessions)
        if self.reclaims.lost:
            await self.reclaim(info.capacity - info.sessions - taken)

    async def reclaim(self, room: int) -> None:
        """Take back the sessions a Redis restart without its data took away (cluster/reclaim.py)."""
        try:
            age = await self.store.epoch_age()
            known = set(await self.store.session_ids())
        except ClusterError as exc:
            self._redis_failed("reclaim", exc)
            return
        for row in self.reclaims.due(trio.current_time(), age, known)[: max(0, room)]:
            sent = trio.current_time()
            try:
                got = await self.store.acquire(row.session, self.host, self.timing.ttl, self.leases.highest_token)
                if got.outcome == "quarantine":
                    continue  # remembered: the next round
                self.reclaims.forget(row.session)
                if got.outcome != "ok" or got.value is None:
                    continue  # somebody else's now
                self.leases.acquired(row.session, got.value, sent)
                if not await self.store.write(row.session, got.value, {"record": encode_record(row)}):
                    self.leases.released(row.session)
                    continue
            except ClusterError as exc:
                self._redis_failed("reclaim", exc)
                continue
            self.registry.rows[row.session] = row
            if self.fleet is not None and self.fleet.adopt(row):
                self.metrics.reclaimed.inc()
                log.warning("cluster_session_reclaimed", session=row.session, should_run=row.should_run)

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
        """Acquire orphans up to ``room`` and the free launch slots (cluster/takeover.py)."""
        return await take_over(self, room)

    def _redis_failed(self, op: str, exc: ClusterError) -> None:
        if isinstance(exc, ClusterDataError):
            self.metrics.data_refused.labels(exc.kind).inc()
            log.error("cluster_data_refused", op=op, key=exc.key, error=str(exc))
            return
        self.metrics.redis_errors.labels(op).inc()
        log.warning("cluster_redis_error", op=op, error=str(exc))
        if self._down is None:
            self._down = (trio.current_time(), str(exc))
            log.error("cluster_redis_unreachable", op=op, error=str(exc))
        else:
            self._down = (self._down[0], str(exc))

    def _redis_answered(self) -> None:
        if self._down is not None:
            log.info("cluster_redis_reachable", after=round(trio.current_time() - self._down[0], 3))
            self._down = None

    def redis_unreachable(self) -> str | None:
        """Why Redis cannot be reached (since when, the last error), or None when its last call answered."""
        if self._down is None:
            return None
        since, error = self._down
        return f"for {trio.current_time() - since:.1f} s: {error}"

    _refused: dict[str, float]  # sessions whose row this host could not read -> when to try again

    # ------------------------------------------------------------------ limits and drain (parts C, D)

    async def _admit(self, session_id: str, value: str, owner_uid: int | None, caller: Caller) -> None:
        """The fleet's limits for the session just acquired; on refusal the lease goes back."""
        try:
            await self.limits.admit(
                session_id, value, owner_uid, caller, self.host, self.config.max_sessions,
                self.config.max_sessions_per_uid,
            )
        except (ClusterError, WaDaemonError):
            self.leases.released(session_id)
            with trio.move_on_after(self.timing.renew_timeout):
                try:
                    await self.store.release(session_id, value)
                except ClusterError as exc:
                    self._redis_failed("release", exc)  # it expires after lease_ttl instead
            raise

    async def attempt(self, session_id: str) -> None:
        await self.limits.attempt(session_id, self.config.connect_min_interval)

    async def drain(self, host: str, cancel: bool) -> DrainResult:
        return await self.drainer.request(host, cancel)

    async def drain_on_stop(self) -> None:
        await drain_before_stop(self)

    @property
    def remote(self) -> RemoteCache:
        """Other hosts' sessions, from the fleet's event stream (cluster/fanout.py)."""
        return self.fanout.cache

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
