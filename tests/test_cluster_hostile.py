"""Hostile data in the fleet's Redis (docs/cluster.md, "Failure table"): every kind is
refused with a ClusterDataError naming the key, counted, logged, and never crashes a
host or stalls its loops. On a real redis-server: the store, then running daemons."""

from __future__ import annotations

import msgspec
import pytest
import trio

from wa_daemon import AsyncClient, Unavailable
from wa_daemon.daemon.cluster.store import ClusterDataError, HostBeat, RedisStore, open_store

from . import test_cluster_store
from .helpers import make_config
from .redis_server import RedisServer
from .test_cluster import TTL, connect_when_granted, fleet
from .test_cluster_store import TTL as STORE_TTL
from .test_cluster_store import acquire_ok, record

GOOD = record("s1")
redis, store = test_cluster_store.redis, test_cluster_store.store  # the same fixtures


async def raw(store: RedisStore, *command: str) -> None:
    await store.client.eval("return redis.call(unpack(ARGV))", [], list(command))


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (b"{not json", "is not valid"),
        (b"[1, 2]", "is not valid"),  # JSON of the wrong shape
        (b'{"session": "s1", "owner_uid": "root", "created_at": "2026-01-01T00:00:00Z", "should_run": true}',
         "is not valid"),  # a wrong type inside
        (GOOD[:-1] + b', "shard": 7}', r"unknown fields \['shard'\]"),  # a newer version's row
    ],
)
async def test_a_registry_row_that_does_not_decode_is_refused(store: RedisStore, row: bytes, match: str) -> None:
    with trio.fail_after(10):
        value = await acquire_ok(store, "s1", "h1")
        assert await store.write("s1", value, {"record": row})
        with pytest.raises(ClusterDataError, match=match) as info:
            await store.record("s1")
        assert info.value.key == "wa:session:s1" and info.value.kind == "session"
        assert "wa:session:s1" in str(info.value)


async def test_a_session_key_of_the_wrong_type_is_named(store: RedisStore) -> None:
    with trio.fail_after(10):
        value = await acquire_ok(store, "s1", "h1")
        await raw(store, "SET", "wa:session:s1", "a string")
        with pytest.raises(ClusterDataError, match="wa:session:s1 is a string, not a hash") as info:
            await store.record("s1")
        assert info.value.key == "wa:session:s1"
        with pytest.raises(ClusterDataError, match="wa:session:s1 is a string, not a hash"):
            await store.write("s1", value, {"record": GOOD})


async def test_an_unknown_field_of_the_session_hash_is_left_alone(store: RedisStore) -> None:
    """Newer versions (and other parts of the fleet) add fields to the hash; a fenced
    HSET keeps them, so they cost nothing and are not refused."""
    with trio.fail_after(10):
        value = await acquire_ok(store, "s1", "h1")
        assert await store.write("s1", value, {"record": GOOD})
        await raw(store, "HSET", "wa:session:s1", "from_the_future", "x")
        assert await store.record("s1") is not None
        assert await store.write("s1", value, {"record": GOOD})
        assert await store.client.hget("wa:session:s1", "from_the_future") == b"x"


@pytest.mark.parametrize(
    ("command", "match"),
    [
        (("SET", "wa:lease:s1", "garbage"), "wa:lease:s1 holds 'garbage', not a lease value"),
        (("SET", "wa:lease:s1", "12x h2"), "wa:lease:s1 holds '12x h2', not a lease value"),
        (("HSET", "wa:lease:s1", "token", "1"), "wa:lease:s1 is a hash, not a string"),
        (("SET", "wa:epoch", "x"), "wa:epoch is not a hash"),
        (("HSET", "wa:epoch", "run_id", "ffff", "since_us", "soon"), None),  # another run: a new epoch
        (("SET", "wa:token", "many"), "wa:token is not a number"),
        (("SET", "wa:expiry", "x"), "wa:expiry is a string, not a zset"),
    ],
)
async def test_lease_data_of_the_wrong_format_is_refused(
    store: RedisStore, command: tuple[str, ...], match: str | None
) -> None:
    with trio.fail_after(10):
        await acquire_ok(store, "warm", "h1")  # past the first quarantine
        await store.client.delete([command[1]])
        await raw(store, *command)
        if match is None:
            assert (await store.acquire("s1", "h1", STORE_TTL, 0)).outcome == "quarantine"
            return
        with pytest.raises(ClusterDataError, match=match) as info:
            await store.acquire("s1", "h1", STORE_TTL, 0)
        assert info.value.key == command[1]
        if command[1] == "wa:lease:s1":
            with pytest.raises(ClusterDataError, match="wa:lease:s1"):
                await store.holder("s1")
            # a renewal finds it is not ours: the session would be fenced, nothing raised
            assert await store.renew(STORE_TTL, [("s1", "1 h1")]) == {"s1": False}


async def test_a_heartbeat_with_garbage_fields_leaves_that_host_out(store: RedisStore) -> None:
    with trio.fail_after(10):
        good = HostBeat(host="h1", version="1", capacity=5, sessions=0, running=0, lease_ttl=TTL, pid=1)
        await store.heartbeat(good, 10)
        await raw(store, "HSET", "wa:host:h3", "host", "h3", "capacity", "lots", "at_us", "-")
        await raw(store, "SET", "wa:host:h4", "not a hash")
        await store.client.sadd("wa:hosts", ["h3", "h4"])
        refused: list[ClusterDataError] = []
        store.on_refused = refused.append
        beats, _ = await store.hosts()
        assert [msgspec.structs.replace(b, at_us=0) for b in beats] == [good]
        assert [e.key for e in refused] == ["wa:host:h3", "wa:host:h4"]
        assert "heartbeat of host 'h3' (wa:host:h3) is not valid" in str(refused[0])
        assert "wa:host:h4 is a string, not a hash" in str(refused[1])


# ---------------------------------------------------------------- running daemons


def refused_count(daemon: object, kind: str) -> float:
    node = daemon.node  # type: ignore[attr-defined]
    return float(node.metrics.data_refused.labels(kind)._value.get())


async def test_a_daemon_refuses_hostile_data_and_keeps_serving(redis: RedisServer) -> None:
    """Rows nobody can read, a lease of the wrong format, a garbage heartbeat and a
    broken wa:epoch: the host answers every call (with `unavailable` naming the key
    where it must), takes over the readable sessions, and never retries a bad one in
    a tight loop."""
    with trio.fail_after(60):
        async with open_store(make_config(redis_url=redis.url)) as store:
            # Two orphans from a host that is gone: one readable, one not.
            for session, row in (("bad", b"{broken"), ("good", record("good"))):
                value = await acquire_ok(store, session, "gone")
                assert await store.write(session, value, {"record": row})
                await store.release(session, value)
            await raw(store, "SET", "wa:lease:weird", "not a lease")
            await raw(store, "HSET", "wa:host:zz", "host", "zz", "lease_ttl", "soon")
            await store.client.sadd("wa:hosts", ["zz"])
            async with fleet(redis, "a") as daemons, AsyncClient(daemons["a"].socket_path) as wa:
                a = daemons["a"]
                while "good" not in {s.session for s in await wa.list()}:
                    await trio.sleep(0.1)
                assert "bad" not in {s.session for s in await wa.list()}
                assert refused_count(a, "session") >= 1
                with pytest.raises(Unavailable, match="wa:lease:weird holds 'not a lease'") as info:
                    await wa.connect("weird")  # the takeover above shows the quarantine is over
                assert info.value.details["key"] == "wa:lease:weird"
                listed = await wa.hosts()
                assert [h.host for h in listed.hosts] == ["a"]
                assert refused_count(a, "host") >= 1
                # several takeover rounds later the bad row was tried once, not every round
                await trio.sleep(TTL * 1.5)
                assert refused_count(a, "session") == 1

                await raw(store, "DEL", "wa:epoch")
                await raw(store, "SET", "wa:epoch", "x")
                with pytest.raises(Unavailable, match="wa:epoch is not a hash"):
                    await wa.connect("new")
                assert refused_count(a, "epoch") >= 1
                await wa.ping()
                await raw(store, "DEL", "wa:epoch")  # fixed by an operator: back to normal
                assert (await connect_when_granted(wa, "new")).host == "a"
