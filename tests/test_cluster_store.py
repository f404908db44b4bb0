"""The Redis store and its scripts (cluster/store.py, cluster/scripts.py) on a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import pytest
import trio

from wa_daemon.daemon.cluster.lease import parse_token
from wa_daemon.daemon.cluster.store import ClusterDataError, ClusterError, HostBeat, RedisStore, open_store
from wa_daemon.daemon.sessions.registry import SessionRecord

from .helpers import make_config
from .redis_server import RedisServer, redis_server

TTL = 0.5  # the quarantine after every Redis start lasts one TTL: keep the tests short


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
async def store(redis: RedisServer) -> AsyncIterator[RedisStore]:
    async with open_store(make_config(redis_url=redis.url)) as s:
        yield s


async def acquire_ok(store: RedisStore, session: str, host: str, min_token: int = 0) -> str:
    """Acquire, waiting out the quarantine that follows a fresh epoch."""
    with trio.fail_after(10):
        while True:
            got = await store.acquire(session, host, TTL, min_token)
            if got.outcome == "ok":
                assert got.value is not None
                return got.value
            assert got.outcome == "quarantine", got
            await trio.sleep(got.wait)


def record(session: str) -> bytes:
    return msgspec.json.encode(SessionRecord(session, 1000, datetime(2026, 1, 1, tzinfo=timezone.utc), True))


async def test_a_fresh_redis_grants_no_lease_for_one_ttl(store: RedisStore) -> None:
    with trio.fail_after(10):
        first = await store.acquire("s1", "h1", TTL, 0)
        assert first.outcome == "quarantine" and 0 < first.wait <= TTL
        await trio.sleep(first.wait)
        got = await store.acquire("s1", "h1", TTL, 0)
        assert got.outcome == "ok" and got.value is not None and got.value.endswith(" h1")


async def test_one_holder_check_and_extend_and_expiry(store: RedisStore) -> None:
    with trio.fail_after(10):
        mine = await acquire_ok(store, "s1", "h1")
        other = await store.acquire("s1", "h2", TTL, 0)
        assert (other.outcome, other.value) == ("held", mine)
        for _ in range(3):  # renewed, it outlives its TTL
            await trio.sleep(TTL / 3)
            assert await store.renew(TTL, [("s1", mine)]) == {"s1": True}
        assert await store.holder("s1") == mine
        assert await store.renew(TTL, [("s1", "1 h2")]) == {"s1": False}  # not the holder: untouched
        await trio.sleep(TTL * 1.2)  # not renewed: gone
        assert await store.renew(TTL, [("s1", mine)]) == {"s1": False}
        theirs = await acquire_ok(store, "s1", "h2")
        assert parse_token(theirs) > parse_token(mine)


async def test_fenced_writes_apply_only_under_the_current_lease(store: RedisStore) -> None:
    with trio.fail_after(10):
        old = await acquire_ok(store, "s1", "h1")
        assert await store.write("s1", old, {"record": record("s1")})
        assert (await store.record("s1")) == msgspec.json.decode(record("s1"), type=SessionRecord)
        assert await store.session_ids() == ["s1"]
        assert await store.release("s1", old)
        new = await acquire_ok(store, "s1", "h2")
        assert not await store.write("s1", old, {"record": b"{}"})  # stale: refused by the script
        assert not await store.delete("s1", old)
        assert not await store.release("s1", old)
        assert await store.holder("s1") == new
        assert await store.delete("s1", new)
        assert await store.session_ids() == [] and await store.record("s1") is None


async def test_orphans_are_sessions_whose_lease_expired(store: RedisStore) -> None:
    with trio.fail_after(10):
        a = await acquire_ok(store, "a", "h1")
        b = await acquire_ok(store, "b", "h1")
        for sid, value in (("a", a), ("b", b)):
            assert await store.write(sid, value, {"record": record(sid)})
        assert await store.orphans(10) == []
        await trio.sleep(TTL / 2)
        assert await store.renew(TTL, [("b", b)]) == {"b": True}
        await trio.sleep(TTL * 0.7)  # a expired, b renewed in time
        assert await store.orphans(10) == ["a"]


async def test_heartbeats_expire_with_the_host(store: RedisStore) -> None:
    with trio.fail_after(10):
        beat = HostBeat(host="h1", version="1.2", capacity=50, sessions=3, running=2, lease_ttl=TTL, pid=42)
        await store.heartbeat(beat, TTL)
        (seen,), now = await store.hosts()
        assert msgspec.structs.replace(seen, at_us=0) == beat
        assert 0 <= now - seen.at_us < 2_000_000
        await trio.sleep(TTL * 1.2)
        assert (await store.hosts())[0] == []


async def test_redis_restarted_without_its_data_never_gives_two_owners(redis: RedisServer, store: RedisStore) -> None:
    with trio.fail_after(20):
        old = await acquire_ok(store, "s1", "h1")
        assert await store.write("s1", old, {"record": record("s1")})
        redis.restart(keep_data=False)
        # The holder's next renewal finds nothing: it fences itself.
        assert await store.renew(TTL, [("s1", old)]) == {"s1": False}
        # Nobody else gets the lease for one TTL, the time the old holder had left at most.
        started = trio.current_time()
        got = await store.acquire("s1", "h2", TTL, 0)
        assert got.outcome == "quarantine" and got.wait > TTL * 0.5
        new = await acquire_ok(store, "s1", "h2")
        assert trio.current_time() - started >= TTL * 0.9
        # The counter was lost with the data, yet the token is higher (server time):
        assert parse_token(new) > parse_token(old)
        assert not await store.write("s1", old, {"record": b"{}"})


async def test_redis_restarted_with_its_data_keeps_leases_and_quarantines_takeovers(
    redis: RedisServer, store: RedisStore
) -> None:
    with trio.fail_after(20):
        held = await acquire_ok(store, "s1", "h1")
        redis.restart(keep_data=True)
        assert await store.renew(TTL, [("s1", held)]) == {"s1": True}
        assert (await store.acquire("s2", "h2", TTL, 0)).outcome == "quarantine"
        assert parse_token(await acquire_ok(store, "s2", "h2")) > parse_token(held)


async def test_a_caller_that_saw_a_higher_token_gets_a_higher_one(store: RedisStore) -> None:
    with trio.fail_after(10):
        far = 10**15 * 8  # above any server-time token for the next two centuries
        assert parse_token(await acquire_ok(store, "s1", "h1", min_token=far)) == far + 1


@pytest.mark.parametrize(
    ("key", "command", "match"),
    [
        ("wa:token", ("SET", "wa:token", "not-a-number"), "wa:token is not a number"),
        ("wa:epoch", ("SET", "wa:epoch", "x"), "wa:epoch is not a hash"),
        ("wa:epoch", ("HSET", "wa:epoch", "run_id", "0"), None),  # another run: a new epoch, no error
    ],
)
async def test_hostile_lease_data_is_refused_with_a_clear_error(
    store: RedisStore, key: str, command: tuple[str, ...], match: str | None
) -> None:
    with trio.fail_after(10):
        await acquire_ok(store, "warm", "h1")  # past the first quarantine
        await store.client.delete([key])
        await store.client.eval("return redis.call(unpack(ARGV))", [], list(command))
        if match is None:
            assert (await store.acquire("s1", "h1", TTL, 0)).outcome == "quarantine"
            return
        with pytest.raises(ClusterDataError, match=match):
            await store.acquire("s1", "h1", TTL, 0)


async def test_hostile_rows_are_refused_with_a_clear_error(store: RedisStore) -> None:
    with trio.fail_after(10):
        value = await acquire_ok(store, "s1", "h1")
        await store.write("s1", value, {"record": b'{"session": "s1", "owner_uid": "root"}'})
        with pytest.raises(ClusterDataError, match=r"registry row of 's1' \(wa:session:s1 field record\) is not valid"):
            await store.record("s1")
        await store.write("s1", value, {"record": record("s2")})
        with pytest.raises(ClusterDataError, match="names another session"):
            await store.record("s1")
        await store.client.set("wa:lease:s9", "x")
        await store.client.hset("wa:lease:s8", {"a": "b"})  # a lease of the wrong type is simply not ours
        assert await store.renew(TTL, [("s9", "1 h1"), ("s8", "1 h1")]) == {"s9": False, "s8": False}
        # a heartbeat of the wrong shape: refused (tests/test_cluster_hostile.py), the others listed


async def test_password_from_a_file_and_unreachable_redis(tmp_path: Path) -> None:
    with redis_server(password="pw-" + "x" * 12) as server, trio.fail_after(10):
        secret = tmp_path / "pw"
        secret.write_text(f"{server.password}\n")
        url = f"unix://{server.sock}"
        async with open_store(make_config(redis_url=url, redis_password_file=str(secret))) as s:
            assert (await s.acquire("s1", "h1", TTL, 0)).outcome == "quarantine"
        async with open_store(make_config(redis_url=url, lease_ttl=2)) as s:
            with pytest.raises(ClusterError) as info:
                await s.acquire("s1", "h1", TTL, 0)
            assert server.password not in str(info.value)
        server.stop()
        async with open_store(make_config(redis_url=url, redis_password_file=str(secret), lease_ttl=2)) as s:
            with pytest.raises(ClusterError):
                await s.acquire("s1", "h1", TTL, 0)
