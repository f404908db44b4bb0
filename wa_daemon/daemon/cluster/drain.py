"""Drain: a host hands every session it holds to the others (docs/cluster.md).

``drain`` on any host sets ``wa:drain:{host}``; the target notices it at its next
upkeep (or drains by itself on SIGTERM with ``drain_on_stop``), publishes
``draining`` in its heartbeat, takes over nothing more, admits no new session,
and hands its sessions over, as many at a time as it has launch slots: the
session's browser is closed (``should_run`` kept, so the next owner runs it),
the auth snapshot is saved (``ClusterNode.before_release``), then ``HANDOVER``
writes the row and releases the lease in one fenced step, marking the session
an orphan at once so another host's next takeover scan takes it. A host clears
its own drain request when it starts (a restart after an upgrade takes sessions
again); ``wactl drain HOST --cancel`` clears it on a running host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from ...errors import NotFound, Unavailable
from ...protocol import DrainResult
from ..ops.log import get_logger
from . import scripts
from .registry import encode_record
from .store import PREFIX, ClusterError, RedisStore

if TYPE_CHECKING:
    from .node import ClusterNode

__all__ = ["HANDOVER", "REQUEST", "Drain", "hand_over_all"]

log = get_logger("cluster")

# KEYS: lease, session row, sessions set, expiry zset. ARGV: lease value, session, then field, value pairs.
# Writes the row and gives the lease up in one step, only while ``value`` holds it; the
# expiry score 0 makes it an orphan now, not when the given-up lease would have expired.
# 1 handed over, 0 stale.
HANDOVER = scripts.FENCED_WRITE.removesuffix("return 1\n") + """
redis.call('DEL', KEYS[1])
redis.call('ZADD', KEYS[4], 0, ARGV[2])
return 1
"""

# KEYS: drain key, the host's heartbeat, hosts set. ARGV: '1' request, '0' cancel.
# 1 done; 0 no such live host (a request is then not stored; a cancel still clears).
REQUEST = """
local live = redis.call('EXISTS', KEYS[2]) == 1 and redis.call('SISMEMBER', KEYS[3], ARGV[2]) == 1
if ARGV[1] == '0' then
  redis.call('DEL', KEYS[1])
  return live and 1 or 0
end
if not live then return 0 end
local t = redis.call('TIME')
redis.call('SET', KEYS[1], t[1])
return 1
"""


class DrainMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.handed_over = Counter(
            "wa_cluster_drained_sessions", "sessions this host handed to other hosts while draining", registry=registry
        )
        self.draining = Gauge("wa_cluster_draining", "1 while this host drains", registry=registry)


class Drain:
    """This host's drain state, and the drain requests of any host."""

    def __init__(self, store: RedisStore, host: str) -> None:
        self.store = store
        self.host = host
        self.requested = False  # wa:drain:{host} seen at the last upkeep
        self.on_stop = False  # draining because the daemon is stopping (drain_on_stop)
        self.round: trio.Event | None = None  # a hand-over round under way (start_round), set when done
        self.metrics = DrainMetrics(CollectorRegistry())
        self._handover = store.client.register_script(HANDOVER)
        self._request = store.client.register_script(REQUEST)

    def attach(self, registry: CollectorRegistry) -> None:
        self.metrics = DrainMetrics(registry)
        self.metrics.draining.set_function(lambda: int(self.draining))

    @property
    def draining(self) -> bool:
        return self.requested or self.on_stop

    @staticmethod
    def key(host: str) -> str:
        return f"{PREFIX}drain:{host}"

    async def clear_own(self) -> None:
        """At start: a host that starts takes sessions again (the rolling upgrade's restart)."""
        await self.store._call("drain", self.store.client.delete([self.key(self.host)]))

    async def poll(self) -> bool:
        was = self.draining
        self.requested = await self.store._call("drain", self.store.client.get(self.key(self.host))) is not None
        if self.draining != was:
            log.info("cluster_draining" if self.draining else "cluster_drain_cancelled", host=self.host)
        return self.draining

    async def request(self, host: str, cancel: bool) -> DrainResult:
        """The RPC: ask ``host`` (any host of the fleet, this one too) to drain, or not."""
        try:
            reply = await self.store._call(
                "drain",
                self._request(
                    keys=[self.key(host), f"{PREFIX}host:{host}", f"{PREFIX}hosts"], args=[0 if cancel else 1, host]
                ),
            )
        except ClusterError as exc:
            raise Unavailable(f"the fleet's Redis cannot be asked: {exc}", {"host": host}) from None
        if not reply and not cancel:
            raise NotFound(
                f"no live host {host!r} in the fleet (see `wactl hosts`)", {"host": host}
            )
        log.info("cluster_drain_requested", host=host, cancel=cancel)
        return DrainResult(host, draining=not cancel)

    async def hand_over(self, session: str, value: str, fields: dict[str, bytes]) -> bool:
        args: list[str | bytes] = [value, session]
        for name, data in fields.items():
            args += [name, data]
        keys = [self.store.lease_key(session), self.store.session_key(session), f"{PREFIX}sessions", f"{PREFIX}expiry"]
        return bool(await self.store._call("handover", self._handover(keys=keys, args=args)))


async def hand_over_all(node: ClusterNode) -> int:
    """Hand every session this host holds to the others, as many at a time as the
    launch slots allow (the fleet's ``hand_over`` takes one). Returns how many."""
    done = 0

    async def one(session: str) -> None:
        nonlocal done
        if await hand_over_one(node, session):
            done += 1

    async with trio.open_nursery() as nursery:
        for session in list(node.leases.held):
            nursery.start_soon(one, session)
    return done


async def hand_over_one(node: ClusterNode, session: str) -> bool:
    fleet = node.fleet
    if fleet is None or session not in node.leases.held:
        return False
    record = await fleet.hand_over(session)  # browser closed, should_run kept, forgotten here
    if record is None:
        return False  # deleted meanwhile, or an operation holds it: the next round tries again
    node.registry.pending.pop(session, None)  # this row supersedes anything queued
    await node.before_release(session)
    value = node.leases.value(session)
    if value is None:
        return False  # fenced meanwhile: the lease is another's already
    # The row as it stands now; its status stays the last one written while it ran.
    fields = {"record": encode_record(record)}
    node._written.pop(session, None)
    try:
        ok = await node.drainer.hand_over(session, value, fields)
    except ClusterError as exc:
        node._redis_failed("handover", exc)
        node.leases.released(session)  # not renewed any more: others take it over once it expires
        return False
    node.leases.released(session)
    if not ok:
        log.warning("cluster_write_stale", session=session)
        return False
    node.drainer.metrics.handed_over.inc()
    log.info("cluster_session_handed_over", session=session, should_run=record.should_run)
    return True


def start_round(node: ClusterNode) -> None:
    """Hand over, in the background (the heartbeat goes on), what the host holds."""
    drain = node.drainer
    if drain.round is None and node._nursery is not None and node.leases.held:
        done = drain.round = trio.Event()
        node._nursery.start_soon(_round, node, done)


async def _round(node: ClusterNode, done: trio.Event) -> None:
    try:
        handed = await hand_over_all(node)
        log.info("cluster_drain_round", handed_over=handed, left=len(node.leases.held))
    finally:
        node.drainer.round = None
        done.set()


async def drain_before_stop(node: ClusterNode) -> None:
    """SIGTERM with drain_on_stop: hand every session over before the daemon exits.
    The caller bounds it (the stop deadline); what is left stops as usual and is
    taken over once its lease expires."""
    node.drainer.on_stop = True
    log.info("cluster_draining", host=node.host, on_stop=True)
    await node.upkeep()  # the heartbeat says draining before the first lease goes
    while node.leases.held:
        if node.drainer.round is not None:
            await node.drainer.round.wait()
        else:
            await hand_over_all(node)
            await trio.sleep(0.05)
