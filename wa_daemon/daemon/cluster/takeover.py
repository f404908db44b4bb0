"""Taking over the sessions of a host that died (docs/cluster.md, "Failover").

At every upkeep, and between upkeeps as soon as a launch slot frees while orphans
may be left (the pace: cluster/pace.py), the node asks ``ORPHANS`` for as many
sessions as it has free launch slots (at most its room), acquires each, restores
its row and auth snapshot and starts it through the launch queue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ...errors import Unavailable
from ...protocol import State
from ..ops.log import get_logger
from ..sessions.placement import host_info
from .lease import parse_token
from .pace import CHASE_EVERY, takeover_quota
from .store import ClusterDataError, ClusterError

if TYPE_CHECKING:
    from .node import ClusterNode

__all__ = ["chase", "room_of", "take_over"]

log = get_logger("cluster")

REFUSED_RETRY = 4  # lease_ttls before a session whose row was refused is tried again


def room_of(node: ClusterNode) -> tuple[int, int]:
    """This host's room (capacity - sessions) and its sessions still starting."""
    assert node.fleet is not None
    info = host_info(node.host, node.fleet, node.config.max_sessions)
    return info.capacity - info.sessions, node.fleet.counts_by_state().get(State.STARTING, 0)


async def chase(node: ClusterNode) -> None:
    """Between upkeeps: another round as soon as a launch slot frees while orphans
    may be left, so a survivor's pace is its launch queue's, not the renewal period's."""
    while True:
        await trio.sleep(CHASE_EVERY)
        if node.fleet is None or not node.joined or node.join_refused is not None or node.drainer.draining:
            continue
        room, starting = room_of(node)
        if node.pace.due(trio.current_time(), room, node.config.max_concurrent_launches, starting):
            await take_over(node, room)


async def take_over(node: ClusterNode, room: int) -> int:
    """Acquire sessions whose lease expired, up to ``room`` and the free launch slots
    (the other survivors get their share). Returns how many."""
    if node.fleet is None:
        return 0
    async with node.taking:  # the upkeep's round and the chase's never overlap
        now_room, starting = room_of(node)  # as it is now, after waiting for the other round
        quota = takeover_quota(min(room, now_room), node.config.max_concurrent_launches, starting)
        if quota <= 0:
            return 0
        taken = await _round(node, quota)
        if not node.pace.more:
            await _watch_expiry(node)
        return taken


async def _watch_expiry(node: ClusterNode) -> None:
    """No orphan left: note when the next unrenewed lease expires, to take it right then."""
    try:
        after = await node.store.next_expiry(node.timing.renew_every)
    except ClusterError as exc:
        node._redis_failed("orphans", exc)
        return
    node.pace.expiring(trio.current_time(), after)


async def _round(node: ClusterNode, quota: int) -> int:
    fleet = node.fleet
    assert fleet is not None
    now = trio.current_time()
    refused = node._refused
    for session, until in list(refused.items()):
        if until <= now:
            del refused[session]
    try:
        # Sessions refused lately (a row this host cannot read) come first, being
        # the oldest orphans: ask for more, so they never block the others.
        orphans = [s for s in await node.store.orphans(quota + len(refused)) if s not in refused]
    except ClusterError as exc:
        node._redis_failed("orphans", exc)
        return 0
    node.pace.asked(quota, len(orphans))
    taken = 0
    for session in orphans[:quota]:
        sent = trio.current_time()
        try:
            got = await node.store.acquire(session, node.host, node.timing.ttl, node.leases.highest_token)
            if got.outcome != "ok":
                if got.outcome == "held" and got.value:
                    node.leases.saw_token(parse_token(got.value))
                continue
            assert got.value is not None
            node.leases.acquired(session, got.value, sent)
            record = await node._record_of(session)
        except ClusterError as exc:
            node._redis_failed("takeover", exc)
            if isinstance(exc, ClusterDataError):
                refused[session] = trio.current_time() + REFUSED_RETRY * node.timing.ttl
            continue
        if record is None:  # a lease without a row: nothing to run
            node.leases.released(session)
            continue
        if fleet.adopt(record):
            taken += 1
            node.metrics.takeovers.inc()
            log.info("cluster_session_taken_over", session=session, should_run=record.should_run)
            if record.should_run:
                await noted_attempt(node, session)
    return taken


async def noted_attempt(node: ClusterNode, session_id: str) -> None:
    """A taken-over session starts an attempt here: a connect elsewhere waits for it too."""
    try:
        await node.limits.attempt(session_id, node.config.connect_min_interval, check=False)
    except Unavailable:
        pass  # counted by the next failing call; the rate limit is not worth a lost takeover
