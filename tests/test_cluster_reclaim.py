"""The sans-I/O decisions of cluster/reclaim.py and cluster/join.py (no Redis, no clock)."""

from __future__ import annotations

from datetime import datetime, timezone

from wa_daemon.daemon.cluster.join import ttl_disagreement
from wa_daemon.daemon.cluster.reclaim import Reclaims
from wa_daemon.daemon.cluster.store import HostBeat
from wa_daemon.daemon.sessions.registry import SessionRecord


def row(session: str) -> SessionRecord:
    return SessionRecord(session, 1000, datetime(2026, 1, 1, tzinfo=timezone.utc), True)


def test_only_leases_lost_to_a_restart_are_taken_back() -> None:
    r = Reclaims(ttl=15, keep_for=60)
    r.remember(row("s1"), now=100)
    # Redis's run began 20 s ago, the fence was 2 s ago: the lease was good until at most
    # 15 s before the fence, long after that run began: lost to another host, not a restart.
    assert r.due(102, epoch_age=20, known=set()) == [] and r.lost == {}
    r.remember(row("s1"), now=100)
    # the run began 5 s ago (after the lease was last confirmed): a restart
    assert r.due(102, epoch_age=5, known=set()) == [row("s1")]
    assert r.due(103, epoch_age=None, known=set()) == [row("s1")]  # no script noticed the run yet
    assert r.due(104, epoch_age=7, known={"s1"}) == [] and r.lost == {}  # the fleet knows it: not ours
    r.remember(row("s2"), now=100)
    assert r.due(161, epoch_age=1, known=set()) == [] and r.lost == {}  # remembered too long


def test_lease_ttl_must_be_the_live_hosts() -> None:
    def beat(host: str, ttl: float) -> HostBeat:
        return HostBeat(host=host, version="1", capacity=1, sessions=0, running=0, lease_ttl=ttl, pid=1)

    assert ttl_disagreement("a", 15, [beat("a", 10), beat("b", 15)]) is None  # its own old heartbeat does not count
    problem = ttl_disagreement("a", 15, [beat("b", 15), beat("c", 10)])
    assert problem is not None and "lease_ttl 15 s differs from the live hosts' (c: 10 s)" in problem
