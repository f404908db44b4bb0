"""The fleet-wide limits (cluster/limits.py): the replies' meaning without I/O, the
scripts on a real redis-server with two hosts' connections admitting at once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone

import msgspec
import pytest
import trio

from wa_daemon.daemon.cluster.limits import Admit, SharedLimits, decode_admit, rate_limited, refusal
from wa_daemon.daemon.cluster.store import ClusterDataError, HostBeat, RedisStore, open_store
from wa_daemon.daemon.sessions.caller import ADMIN, Caller
from wa_daemon.daemon.sessions.registry import SessionRecord
from wa_daemon.errors import LimitExceeded, PermissionDenied, RateLimited, Unavailable

from .helpers import make_config
from .redis_server import RedisServer, redis_server

# ---------------------------------------------------------------------------- sans I/O


def test_the_replies_mean_the_errors_of_a_host_on_its_own() -> None:
    assert refusal(Admit("ok"), "s1", 1000, 2) is None
    label, error = refusal(Admit("uid", count=2), "s1", 1000, 2) or ("", None)
    assert label == "sessions_per_uid" and isinstance(error, LimitExceeded)
    assert error.details == {"limit": 2, "uid": 1000}  # what manager._check_uid_limit gives
    label, error = refusal(Admit("full", count=6, capacity=6), "s1", 1000, None) or ("", None)
    assert label == "fleet_sessions" and isinstance(error, LimitExceeded)
    assert error.details == {"limit": 6, "scope": "fleet"}
    label, error = refusal(Admit("denied", owner="1000"), "s1", 2000, None) or ("", None)
    assert label == "owner" and isinstance(error, PermissionDenied) and error.details == {"session": "s1"}
    label, error = refusal(Admit("stale"), "s1", 2000, None) or ("", None)
    assert label == "stale" and isinstance(error, Unavailable)
    limited = rate_limited("s1", 5.0, 1234)
    assert isinstance(limited, RateLimited) and limited.details == {"retry_after": 1.234, "session": "s1"}
    assert "less than 5 s ago; retry in 1.2 s" in limited.message


def test_a_reply_of_the_wrong_shape_is_refused() -> None:
    assert decode_admit([b"full", b"3", b"4"]) == Admit("full", count=3, capacity=4)
    for bad in ([], [b"what"], [b"full", b"x"], [b"uid"]):
        with pytest.raises(ClusterDataError):
            decode_admit(bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- on a real Redis

A, B = Caller.user(1000), Caller.user(2000)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
async def stores(redis: RedisServer) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    """Two hosts' connections to one Redis."""
    async with open_store(make_config(redis_url=redis.url)) as one, open_store(make_config(redis_url=redis.url)) as two:
        yield one, two


async def lease(store: RedisStore, session: str, host: str) -> str:
    """A lease that lasts the test (past the fresh Redis's short quarantine)."""
    while True:
        got = await store.acquire(session, host, 0.3, 0)
        if got.outcome == "ok":
            assert got.value is not None
            assert (await store.renew(60, [(session, got.value)]))[session]
            return got.value
        assert got.outcome == "quarantine", got
        await trio.sleep(got.wait)


def row(session: str, owner: int | None) -> bytes:
    return msgspec.json.encode(SessionRecord(session, owner, datetime(2026, 1, 1, tzinfo=timezone.utc), True))


async def beat(store: RedisStore, host: str, capacity: int) -> None:
    await store.heartbeat(HostBeat(host, "t", capacity, 0, 0, 60.0, 1), 60)


async def admit(
    limits: SharedLimits, store: RedisStore, session: str, owner: int | None, caller: Caller, host: str = "h1",
    capacity: int = 2, per_uid: int | None = 2,
) -> None:
    value = await lease(store, session, host)
    try:
        await limits.admit(session, value, owner, caller, host, capacity, per_uid)
    except Exception:
        await store.release(session, value)  # as the node does: a refused session's lease goes back
        raise


async def test_per_uid_and_fleet_limits_count_every_host_and_forget_deleted_sessions(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    one, two = stores
    l1, l2 = SharedLimits(one), SharedLimits(two)
    with trio.fail_after(20):
        await beat(one, "h1", 2)
        await beat(two, "h2", 1)  # the fleet: h1 (2) + h2 (1) = 3
        await admit(l1, one, "a1", 1000, A)
        await admit(l2, two, "a2", 1000, A, host="h2", capacity=1)  # the same uid on another host
        with pytest.raises(LimitExceeded) as info:
            await admit(l1, one, "a3", 1000, A)
        assert info.value.details == {"limit": 2, "uid": 1000}
        await admit(l1, one, "admin1", 1000, ADMIN)  # admins are exempt from the per-uid limit
        with pytest.raises(LimitExceeded) as info:
            await admit(l2, two, "b1", 2000, B, host="h2", capacity=1)
        assert info.value.details == {"limit": 3, "scope": "fleet"}
        assert l2.metrics.refusals.labels("fleet_sessions")._value.get() == 1

        # a1's row is written, then deleted (fenced): it counts no more, for the uid or the fleet
        value = await one.holder("a1")
        assert value is not None
        assert await one.write("a1", value, {"record": row("a1", 1000)})
        assert await one.delete("a1", value)
        await admit(l2, two, "b1", 2000, B, host="h2", capacity=1)
        # an admission whose host died before writing the row (its lease is gone) counts no more
        held = await two.holder("a2")
        assert held is not None and await two.release("a2", held)
        await admit(l1, one, "a4", 1000, A)
        assert await one.client.smembers("wa:uid:1000") == {b"a4", b"admin1"}

        # a dead host's sessions still exist: they count while their rows are there
        value = await one.holder("a4")
        assert value is not None and await one.write("a4", value, {"record": row("a4", 1000)})
        assert await one.release("a4", value)
        with pytest.raises(LimitExceeded, match="fleet holds its maximum of 3"):
            await admit(l1, one, "a5", 1000, A)


async def test_two_hosts_admitting_at_once_never_pass_the_limit_together(stores: tuple[RedisStore, RedisStore]) -> None:
    one, two = stores
    l1, l2 = SharedLimits(one), SharedLimits(two)
    admitted: list[str] = []
    refused: list[str] = []

    async def try_one(limits: SharedLimits, store: RedisStore, session: str, host: str) -> None:
        try:
            await admit(limits, store, session, 1000, A, host=host, capacity=50, per_uid=3)
            admitted.append(session)
        except LimitExceeded:
            refused.append(session)

    with trio.fail_after(20):
        await lease(one, "warm", "h1")  # past the quarantine first, so every attempt races
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(try_one, l1, one, f"x{i}", "h1")
                nursery.start_soon(try_one, l2, two, f"y{i}", "h2")
    assert len(admitted) == 3 and len(refused) == 17, (admitted, refused)


async def test_a_session_with_a_row_belongs_to_its_owner_on_every_host(stores: tuple[RedisStore, RedisStore]) -> None:
    one, two = stores
    l2 = SharedLimits(two)
    with trio.fail_after(20):
        value = await lease(one, "s1", "h1")
        assert await one.write("s1", value, {"record": row("s1", 1000)})
        assert await one.release("s1", value)  # h1 died (its lease expired)
        theirs = await lease(two, "s1", "h2")
        with pytest.raises(PermissionDenied):
            await l2.admit("s1", theirs, 2000, B, "h2", 5, None)
        assert l2.metrics.refusals.labels("owner")._value.get() == 1
        # given back at once, and an orphan now (not one TTL later): any host may take it over
        assert await two.holder("s1") is None and await two.orphans(10) == ["s1"]
        theirs = await lease(two, "s1", "h2")
        await l2.admit("s1", theirs, 1000, A, "h2", 5, None)  # its owner may
        await l2.admit("s1", theirs, 0, ADMIN, "h2", 5, None)  # and an admin
        assert await two.client.scard("wa:uid:2000") == 0  # the refused uid counts nothing


async def test_the_rate_limit_holds_across_hosts_and_redis_trouble_is_unavailable(
    redis: RedisServer, stores: tuple[RedisStore, RedisStore]
) -> None:
    one, two = stores
    l1, l2 = SharedLimits(one), SharedLimits(two)
    with trio.fail_after(20):
        await l1.attempt("s1", 0.5)
        with pytest.raises(RateLimited) as info:
            await l2.attempt("s1", 0.5)
        assert 0 < info.value.details["retry_after"] <= 0.5
        await l2.attempt("s1", 0.5, check=False)  # a takeover's attempt is noted, never refused
        await trio.sleep(0.55)
        await l2.attempt("s1", 0.5)
        # hostile data: refused with the key's name, nothing crashes
        await one.client.set("wa:admitting", "x")
        value = await lease(one, "s2", "h1")
        with pytest.raises(ClusterDataError, match="wa:admitting is not a hash"):
            await l1.admit("s2", value, 1000, A, "h1", 5, None)
        redis.stop()
        with pytest.raises(Unavailable, match="rate limit"):
            await l1.attempt("s3", 0.5)
