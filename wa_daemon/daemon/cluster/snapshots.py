"""Auth snapshots in Redis: a session's login moves with its lease (docs/cluster.md, "Auth snapshots").

The owner stores the snapshot (browser/auth_snapshot.py, from the driver's
``export_auth``) under ``wa:auth:{session}`` after ``connected`` and on every clean
stop, through :data:`SNAPSHOT_PUT`, which writes only while the writer's lease is the
current one. A session whose login ends (``logout``, ``logged_out``) or that is
deleted loses its snapshot the same fenced way. The host that takes a session over
reads the snapshot, and the driver checks and restores it into a fresh profile; a
snapshot it refuses costs a QR, never a crash.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec
import trio
from prometheus_client import CollectorRegistry, Counter, Histogram

from ...protocol import SessionStatus, State
from ..browser.auth_snapshot import SnapshotError
from ..ops.log import get_logger
from ..sessions.registry import SessionRecord
from .store import PREFIX, ClusterDataError, ClusterError, RedisStore

if TYPE_CHECKING:
    from .node import ClusterNode

log = get_logger("cluster")

__all__ = ["AuthSnapshots", "SnapshotMetrics", "SnapshotStore"]

# KEYS: lease, auth hash. ARGV: lease value, snapshot, its size; no snapshot: delete it.
# 1 done, 0 stale (the lease holds another value or none).
SNAPSHOT_PUT = """
if redis.pcall('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if ARGV[2] then redis.call('HSET', KEYS[2], 'data', ARGV[2], 'size', ARGV[3], 'lease', ARGV[1]) end
return 1
"""

# KEYS: auth hash. nil when there is none; {data, size, lease} otherwise.
SNAPSHOT_GET = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return false end
if kind ~= 'hash' then return redis.error_reply('wa: ' .. KEYS[1] .. ' is not a hash') end
return redis.call('HMGET', KEYS[1], 'data', 'size', 'lease')
"""


class SnapshotMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.size = Histogram(
            "wa_cluster_auth_snapshot_bytes", "size of the auth snapshots this host stored (compressed)",
            buckets=(1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20),
            registry=r,
        )
        self.writes = Counter(
            "wa_cluster_auth_snapshot_writes", "auth snapshots stored in Redis", ["why"], registry=r
        )
        self.restores = Counter(
            "wa_cluster_auth_snapshot_restores", "auth snapshots restored into a fresh profile", registry=r
        )
        self.failures = Counter(
            "wa_cluster_auth_snapshot_failures",
            "auth snapshots not stored or not restored (too_big, refused, missing, redis, io, stale)",
            ["op", "reason"], registry=r,
        )
        for why in ("connected", "stopped", "release"):
            self.writes.labels(why)
        for op, reason in (("write", "too_big"), ("restore", "refused"), ("restore", "missing")):
            self.failures.labels(op, reason)


class SnapshotStore:
    """The three scripts, on the fleet's store (its connection and error mapping)."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        client = store.client
        self._put = client.register_script(SNAPSHOT_PUT)
        self._get = client.register_script(SNAPSHOT_GET)

    @staticmethod
    def key(session: str) -> str:
        return f"{PREFIX}auth:{session}"

    async def put(self, session: str, value: str, data: bytes) -> bool:
        keys = [self.store.lease_key(session), self.key(session)]
        return bool(await self.store._call("snapshot", self._put(keys=keys, args=[value, data, str(len(data))])))

    async def delete(self, session: str, value: str) -> bool:
        keys = [self.store.lease_key(session), self.key(session)]
        return bool(await self.store._call("snapshot", self._put(keys=keys, args=[value])))

    async def get(self, session: str) -> bytes | None:
        """The stored snapshot; ClusterDataError when what is stored is not one."""
        reply = await self.store._call("snapshot", self._get(keys=[self.key(session)], args=[]))
        if reply is None:
            return None
        data, size, _lease = reply
        if not isinstance(data, bytes) or not isinstance(size, bytes):
            raise ClusterDataError(f"{self.key(session)} has no data or no size")
        if size != str(len(data)).encode():
            raise ClusterDataError(f"{self.key(session)} holds {len(data)} bytes, its size field says otherwise")
        return data


class AuthSnapshots:
    """One host's side: when to store, what to delete, how to restore."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.store = SnapshotStore(node.store)
        self.metrics = SnapshotMetrics(CollectorRegistry())  # the daemon's own, from attach()
        self._saved_connected: set[str] = set()  # sessions whose `connected` was stored
        self._linked: dict[str, bool] = {}
        self._states: dict[str, State] = {}
        self._locks: dict[str, trio.Lock] = {}

    def attach(self, metrics: CollectorRegistry) -> None:
        self.metrics = SnapshotMetrics(metrics)

    @property
    def cap(self) -> int:
        return self.node.config.auth_snapshot_max_bytes  # read each time: reloadable

    def observe(self, session: str, status: SessionStatus, nursery: trio.Nursery | None) -> None:
        """Called with each held session's status: store after `connected` and after a
        clean stop of a linked session; delete when the login has ended."""
        was_linked = self._linked.get(session, False)
        before = self._states.get(session)
        self._linked[session], self._states[session] = status.linked, status.state
        if nursery is None:
            return
        if status.state == State.CONNECTED:
            if session not in self._saved_connected:
                self._saved_connected.add(session)
                nursery.start_soon(self.save, session, "connected")
            return
        self._saved_connected.discard(session)
        if was_linked and not status.linked:
            nursery.start_soon(self.forget, session)
        elif status.linked and status.state == State.STOPPED and before != State.STOPPED:
            # also when first seen stopped here: a stop between two looks is still a stop
            nursery.start_soon(self.save, session, "stopped")

    def dropped(self, session: str) -> None:
        """This host no longer holds the session."""
        self._saved_connected.discard(session)
        self._linked.pop(session, None)
        self._states.pop(session, None)

    async def save(self, session: str, why: str) -> bool:
        """Store the session's snapshot under this host's lease. True when stored."""
        node = self.node
        driver = node.driver
        if driver is None or not self._may_write(session):
            return False
        lock = self._locks.setdefault(session, trio.Lock())
        async with lock:
            try:
                data = await driver.export_auth(session)
            except OSError as exc:
                return self._failed("write", "io", session, str(exc))
            if data is None:
                return False
            if len(data) > self.cap:
                return self._failed("write", "too_big", session, f"{len(data)} bytes, over auth_snapshot_max_bytes ({self.cap})")
            value = node.leases.value(session)
            if value is None or not self._may_write(session):
                return False  # fenced while the profile was read
            try:
                ok = await self.store.put(session, value, data)
            except ClusterError as exc:
                node._redis_failed("snapshot", exc)
                return self._failed("write", "redis", session, str(exc))
        if not ok:
            self.metrics.failures.labels("write", "stale").inc()
            log.warning("cluster_write_stale", session=session, what="auth snapshot")
            node._fence(session, "stale")
            return False
        self.metrics.writes.labels(why).inc()
        self.metrics.size.observe(len(data))
        log.info("cluster_auth_snapshot_saved", session=session, why=why, bytes=len(data))
        return True

    async def forget(self, session: str, value: str | None = None) -> bool:
        """Delete the stored snapshot (fenced): the login has ended, or the session is deleted."""
        value = value or self.node.leases.value(session)
        if value is None:
            return False
        try:
            ok = await self.store.delete(session, value)
        except ClusterError as exc:
            self.node._redis_failed("snapshot", exc)
            return False
        if ok:
            log.info("cluster_auth_snapshot_deleted", session=session)
        return ok

    async def restore(self, record: SessionRecord) -> SessionRecord:
        """Bring the login of a session this host just acquired into a fresh profile.
        The record comes back ``linked`` only when that worked; otherwise it needs a QR
        (``linked`` false, not the `logged_out` a profile without its login looks like)."""
        session = record.session
        driver = self.node.driver
        if not record.linked or driver is None:
            return record
        started = time.monotonic()
        try:
            data = await self.store.get(session)
        except ClusterDataError as exc:
            return await self._unlinked(record, "refused", str(exc))
        if data is None:
            return await self._unlinked(record, "missing", "no snapshot in Redis")
        live = getattr(driver, "live", {})
        with trio.move_on_after(10):
            while session in live:  # a browser of this host fenced a moment ago, still closing
                await trio.sleep(0.05)
        try:
            await driver.import_auth(session, data, self.cap)
        except SnapshotError as exc:
            return await self._unlinked(record, "refused", str(exc))
        except OSError as exc:
            return await self._unlinked(record, "io", str(exc))
        self._linked[session] = True
        self.metrics.restores.inc()
        took = round(time.monotonic() - started, 4)
        log.info("cluster_auth_snapshot_restored", session=session, bytes=len(data), seconds=took)
        return record

    async def _unlinked(self, record: SessionRecord, reason: str, error: str) -> SessionRecord:
        self._failed("restore", reason, record.session, error)
        driver = self.node.driver
        if driver is not None and record.session not in getattr(driver, "live", {}):
            # Not an old login of this host's own: the phone may have unlinked it since.
            await driver.wipe_auth(record.session)
        return msgspec.structs.replace(record, linked=False)

    def _failed(self, op: str, reason: str, session: str, error: str) -> bool:
        self.metrics.failures.labels(op, reason).inc()
        level = log.error if reason == "refused" else log.warning
        level("cluster_auth_snapshot_failed", session=session, op=op, reason=reason, error=error[:300])
        return False

    def _may_write(self, session: str) -> bool:
        leases = self.node.leases
        return leases.value(session) is not None and leases.may_write(session, trio.current_time())
