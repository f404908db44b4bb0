"""The lease core (cluster/lease.py): renewal and self-fencing decisions, no I/O, no clock."""

from __future__ import annotations

import pytest

from wa_daemon.daemon.cluster.lease import FenceReason, LeaseTable, LeaseTiming, parse_token

TTL = 15.0


def table(*sessions: str, at: float = 0.0) -> LeaseTable:
    t = LeaseTable("h1", LeaseTiming(TTL))
    for i, sid in enumerate(sessions, 1):
        t.acquired(sid, f"{100 + i} h1", sent=at)
    return t


def test_timing_derives_from_the_ttl() -> None:
    timing = LeaseTiming(TTL)
    assert (timing.renew_every, timing.margin, timing.renew_timeout, timing.pause_gap) == (3.0, 3.0, 3.0, 6.0)


def test_renewals_every_fifth_and_confirmed_from_the_send_time() -> None:
    t = table("a", "b")
    assert t.tick(0.0) == ([], True)
    batch = t.renew_batch(0.0)
    assert t.tick(1.0) == ([], False)  # one renewal in flight at a time
    assert t.renewed(batch, {"a": True, "b": True}) == []
    assert t.tick(2.9) == ([], False)
    assert t.tick(3.0) == ([], True)
    batch = t.renew_batch(3.0)
    t.renewed(batch, {"a": True, "b": True})
    assert t.fence_at("a") == 3.0 + TTL - 3.0  # from when it was sent, not answered


def test_unrenewed_lease_is_fenced_margin_before_it_can_expire() -> None:
    t = table("a")
    for now in (0.0, 3.0, 6.0, 9.0):  # four renewals that never answer
        fence, due = t.tick(now)
        assert fence == [] and due
        t.renew_failed(t.renew_batch(now))
    assert t.may_write("a", 11.99)
    fence, _ = t.tick(11.99)
    assert fence == []
    fence, _ = t.tick(12.0)  # ttl - margin after the last confirmed send
    assert fence == [(("a"), FenceReason.EXPIRING)]
    assert "a" not in t.held and not t.may_write("a", 12.0)
    assert 12.0 <= TTL - LeaseTiming(TTL).margin  # dead 3 s before Redis can give it away


def test_lost_lease_is_fenced_at_once_and_kept_ones_extended() -> None:
    t = table("a", "b")
    batch = t.renew_batch(1.0)
    assert t.renewed(batch, {"a": True, "b": False}) == [("b", FenceReason.LOST)]
    assert set(t.held) == {"a"} and t.fence_at("a") == 1.0 + 12.0


def test_a_late_answer_for_a_reacquired_lease_changes_nothing() -> None:
    t = table("a")
    batch = t.renew_batch(1.0)
    t.released("a")
    t.acquired("a", "200 h1", sent=2.0)
    assert t.renewed(batch, {"a": False}) == []  # the batch named the old value
    assert t.value("a") == "200 h1" and t.fence_at("a") == 14.0


def test_pause_past_the_fence_point_fences_without_writing() -> None:
    t = table("a", "b", at=0.0)
    t.acquired("b", "300 h1", sent=10.0)
    t.tick(10.0)
    # SIGSTOP at 10.5, SIGCONT at 20: "a" is past its fence point (12), "b" is not (22)
    fence, due = t.tick(20.0)
    assert fence == [("a", FenceReason.PAUSE)]
    assert due  # re-check at once
    assert not t.may_write("b", 20.0)  # unverified until a renewal sent after the pause
    stale = t.renew_batch(20.0)
    assert t.renewed(stale, {"b": True}) == []
    assert t.may_write("b", 20.1)


def test_after_a_pause_an_answer_to_a_renewal_sent_before_it_verifies_nothing() -> None:
    t = table("a", at=0.0)
    t.tick(0.0)
    before = t.renew_batch(0.5)  # sent, then the host is paused
    fence, due = t.tick(7.0)  # 6.5 s gap: a pause, but not past the fence point (12)
    assert fence == [] and due
    t.renewed(before, {"a": True})
    assert not t.may_write("a", 7.0)
    assert t.tick(7.1) == ([], True)  # the post-pause renewal is still owed
    t.renewed(t.renew_batch(7.1), {"a": True})
    assert t.may_write("a", 7.2)


def test_tokens_seen_only_grow() -> None:
    t = table()
    t.acquired("a", "1796522845400420 h2", sent=0)
    t.saw_token(5)
    assert t.highest_token == 1796522845400420


@pytest.mark.parametrize("bad", ["", "12", "x h1", "-3 h1", "12 ", "1e5 h"])
def test_bad_lease_values_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a lease value"):
        parse_token(bad)
