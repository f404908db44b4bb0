"""The pace of a takeover (docs/cluster.md, "Failover"; cluster/pace.py): survivors take
a dead host's sessions as fast as their launch queues free, not a launch queue's
worth per renewal period, and share them. The decisions without trio; then three
scripted daemon processes on a real redis-server."""

from __future__ import annotations

import math
import time

import pytest

from wa_daemon.daemon.cluster.pace import TakeoverPace, takeover_quota
from wa_daemon.protocol import State

from .test_cluster_failover import Host, Sampler, connect_all, fleet, wait_for


def test_a_round_takes_the_free_launch_slots_at_most_the_room() -> None:
    assert takeover_quota(room=10, launch_slots=2, starting=0) == 2
    assert takeover_quota(room=10, launch_slots=2, starting=1) == 1
    assert takeover_quota(room=10, launch_slots=2, starting=2) == 0
    assert takeover_quota(room=10, launch_slots=2, starting=5) == 0  # restored sessions queue too
    assert takeover_quota(room=1, launch_slots=4, starting=0) == 1
    assert takeover_quota(room=0, launch_slots=4, starting=0) == 0
    assert takeover_quota(room=-3, launch_slots=4, starting=0) == 0  # over capacity after a reload


def test_the_next_round_comes_when_a_slot_frees_while_orphans_may_be_left() -> None:
    pace = TakeoverPace()
    assert not pace.due(0.0, room=10, launch_slots=2, starting=0)  # nothing seen yet: the upkeep looks
    pace.asked(quota=2, found=2)  # a full answer: more may wait
    assert not pace.due(0.1, room=10, launch_slots=2, starting=2)  # both slots busy
    assert pace.due(0.2, room=10, launch_slots=2, starting=1)  # one freed: at once
    pace.asked(quota=1, found=0)  # none left
    assert not pace.due(0.3, room=10, launch_slots=2, starting=0)
    pace.asked(quota=2, found=3)
    assert not pace.due(0.4, room=0, launch_slots=2, starting=0)  # full: stop chasing
    assert not pace.due(0.5, room=5, launch_slots=2, starting=0)  # until an upkeep finds some again
    pace.asked(quota=0, found=0)
    assert not pace.more


def test_a_lease_seen_expiring_is_scanned_for_right_when_it_expires() -> None:
    pace = TakeoverPace()
    pace.expiring(now=10.0, after=1.5)  # an upkeep saw a lease not renewed, due in 1.5 s
    assert not pace.due(11.0, room=5, launch_slots=2, starting=0)
    assert pace.due(11.6, room=5, launch_slots=2, starting=0)
    pace.asked(quota=2, found=1)
    assert not pace.due(11.7, room=5, launch_slots=2, starting=0)  # once
    pace.expiring(now=20.0, after=None)
    assert pace.wake_at is None and not pace.due(30.0, room=5, launch_slots=2, starting=0)


TTL = 10.0  # a renewal period of 2 s: the old pace spread 20 sessions over >= 4 of them
MANY = [f"m{i:02d}" for i in range(20)]


@pytest.mark.slow
def test_survivors_take_a_dead_hosts_sessions_at_their_launch_queues_pace_and_share_them() -> None:
    period = TTL / 5
    with fleet() as (redis, root, hosts):
        hosts["a"] = Host(root, redis, "a", len(MANY), ttl=TTL)
        connect_all(hosts["a"], MANY)
        wait_for("a runs every session", lambda: hosts["a"].connected() == set(MANY), 60)
        for name in "bc":
            hosts[name] = Host(root, redis, name, len(MANY), ttl=TTL)
        survivors = [hosts["b"], hosts["c"]]

        with Sampler(hosts) as sampler:
            killed = time.monotonic()
            hosts["a"].proc.proc.kill()
            hosts["a"].proc.proc.wait(10)
            back: dict[str, float] = {}  # session -> when first seen connected on a survivor
            owner: dict[str, str] = {}
            while len(back) < len(MANY):
                assert time.monotonic() - killed < TTL + 60, f"not back: {sorted(set(MANY) - set(back))}"
                for host in survivors:
                    for session, state in host.running().items():
                        if state == State.CONNECTED and session not in back:
                            back[session] = time.monotonic() - killed
                            owner[session] = host.id
                time.sleep(0.02)
            assert sampler.rounds > 20
        assert sampler.overlaps == [], sampler.overlaps

        first, last = min(back.values()), max(back.values())
        share = {h.id: sum(1 for o in owner.values() if o == h.id) for h in survivors}
        bound = TTL + math.ceil(len(MANY) / 4) * 0.4  # 2 survivors x 2 slots; launch + auth 0.2 s each
        print(
            f"takeover pace: {len(MANY)} sessions of a killed host connected again {first:.2f}-{last:.2f} s "
            f"after the kill (spread {last - first:.2f} s; lease_ttl {TTL:g} s + the launch queues' "
            f"{bound - TTL:.1f} s = {bound:.1f} s), share {share}"
        )
        # The old pace (2 a survivor per renewal period) needs 5 periods' rounds for 20
        # sessions: the last taken >= 4 periods (8 s) after the first.
        assert last - first < 3 * period, (first, last)
        assert min(share.values()) >= len(MANY) // 5, share  # both took a share: no one grabbed all
