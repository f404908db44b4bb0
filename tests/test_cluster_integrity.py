"""Where the fleet's parts meet: a claim that is cancelled or refused leaves no lease
behind (the next connect would skip the fleet's checks), and a host that lost a
session says nothing more about it to the others."""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec
import pytest
import trio
from prometheus_client import CollectorRegistry

from tests.helpers import make_config, running_daemon, short_tmpdir
from tests.redis_server import redis_server
from wa_daemon.daemon.cluster.fanout import EventFanout
from wa_daemon.daemon.cluster.store import PREFIX, open_store
from wa_daemon.daemon.sessions.caller import Caller
from wa_daemon.daemon.sessions.hub import Hub
from wa_daemon.daemon.sessions.registry import SessionRecord
from wa_daemon.errors import PermissionDenied, Unavailable
from wa_daemon.protocol import SessionStatus, State, StateChanged, Transition


async def test_a_cancelled_claim_gives_its_lease_back_and_the_owner_check_still_holds() -> None:
    with trio.fail_after(60), redis_server() as redis:
        async with open_store(make_config(redis_url=redis.url)) as store:
            # the fleet's session s9 of uid 4242, linked, its host gone (no lease)
            row = SessionRecord("s9", 4242, datetime(2026, 1, 1, tzinfo=timezone.utc), False, linked=True)
            await store.client.hset(f"{PREFIX}session:s9", {"record": msgspec.json.encode(row)})
            await store.client.sadd(f"{PREFIX}sessions", ["s9"])
            with short_tmpdir() as tmp:
                async with running_daemon(tmp, redis_url=redis.url, host_id="a", lease_ttl=2.0) as daemon:
                    node, manager = daemon.node, daemon.manager
                    assert node is not None and manager is not None
                    restore = node.snapshots.restore

                    async def slow_restore(record: SessionRecord) -> SessionRecord:
                        await trio.sleep(1.0)  # a snapshot import, a browser still closing
                        return await restore(record)

                    node.snapshots.restore = slow_restore  # type: ignore[method-assign]
                    other = Caller.user(5555)
                    while True:  # until the fleet's quarantine after a fresh Redis is over
                        try:
                            await manager.connect("warm", owner_uid=5555, caller=other)
                            break
                        except Unavailable as exc:
                            await trio.sleep(exc.details.get("retry_after", 0.1))
                    # the owner's connect is cancelled inside the claim, restoring its login
                    # (a client gone, a routed command's budget over)
                    with trio.move_on_after(0.5) as cancelled:
                        await manager.connect("s9", owner_uid=4242, caller=Caller.user(4242))
                    assert cancelled.cancelled_caught
                    assert "s9" not in node.leases.held and await store.holder("s9") is None
                    # another uid's connect still meets the fleet's owner check (before the
                    # fix the held lease let it skip the checks and write a new row over s9)
                    with pytest.raises(PermissionDenied):
                        await manager.connect("s9", owner_uid=5555, caller=other)
                    assert await store.record("s9") == row
                    assert "s9" not in node.leases.held and "s9" not in manager.session_ids()


def test_a_host_that_lost_a_session_publishes_nothing_more_of_it() -> None:
    now = datetime.now(timezone.utc)
    status = SessionStatus("s1", State.STOPPED, now, 0, reason="fenced", host="a", linked=True, owner_uid=1000)
    fenced = StateChanged(Transition(now, State.CONNECTED, State.STOPPED, "fenced", 0), status)
    hub = Hub()
    held: dict[str, object] = {}
    fanout = EventFanout("a", store=None, period=1.0)  # type: ignore[arg-type]
    fanout.attach(hub, lambda session: None, lambda: held, CollectorRegistry())
    hub.publish(fenced)  # its lease is gone (fenced): the new owner speaks for it now
    assert list(fanout._queue) == []
    held["s1"] = object()
    hub.publish(fenced)  # while it holds the lease, every event goes out
    assert [(e.host, e.kind, e.session) for e in fanout._queue] == [("a", "event", "s1")]


def test_a_routed_answer_is_read_back_at_once_and_never_moves_a_status_back() -> None:
    from datetime import timedelta

    from wa_daemon.daemon.cluster.remote import RemoteCache

    cache = RemoteCache("c")
    cache.behind = False  # caught up with the stream: nothing read is stale
    t0 = datetime.now(timezone.utc)
    starting = SessionStatus("p1", State.STARTING, t0, 0, host="b", owner_uid=7)
    cache.note(starting)  # the owner's answer to a connect routed from c
    assert cache.status("p1") == starting
    connected = msgspec.structs.replace(starting, state=State.CONNECTED, since=t0 + timedelta(seconds=1))
    cache.note(connected)
    cache.note(starting)  # an older answer arriving late changes nothing
    assert cache.status("p1") == connected
    cache.note(msgspec.structs.replace(starting, session="mine", host="c"))  # its own sessions are not remote
    assert cache.status("mine") is None
    cache.forget("p1")
    assert cache.status("p1") is None


async def test_a_session_polled_through_another_host_is_not_swept_as_inactive() -> None:
    from tests.test_cluster import connect_when_granted, fleet
    from wa_daemon import AsyncClient

    with trio.fail_after(60), redis_server() as redis:
        async with fleet(redis, "a", "b", inactive_after=3.0, cleanup_interval=0.5) as daemons:
            async with AsyncClient(daemons["a"].socket_path) as a, AsyncClient(daemons["b"].socket_path) as b:
                await connect_when_granted(a, "s1")
                while (await a.status("s1")).state != State.WAITING_QR:
                    await trio.sleep(0.05)
                # 5 s of polls through b only: longer than inactive_after, yet in use
                with trio.move_on_after(5):
                    while True:
                        with trio.move_on_after(0.3):
                            seen = await b.status("s1")
                            assert seen.host == "a" or seen.session != "s1"
                        await trio.sleep(0.3)
                manager = daemons["a"].manager
                assert manager is not None and manager.peek("s1") is not None
                assert manager.peek("s1").state == State.WAITING_QR  # type: ignore[union-attr]
                # nobody polls any more: swept as before
                while (status := manager.peek("s1")) is not None and status.reason != "inactive":
                    await trio.sleep(0.1)
                assert status is not None and status.state == State.FAILED


async def test_two_connects_of_a_new_session_on_one_host_both_answer() -> None:
    with trio.fail_after(60), redis_server() as redis:
        with short_tmpdir() as tmp:
            async with running_daemon(tmp, redis_url=redis.url, host_id="a", lease_ttl=2.0) as daemon:
                node, manager = daemon.node, daemon.manager
                assert node is not None and manager is not None
                admit = node.limits.admit

                async def slow_admit(*args: object, **kwargs: object) -> None:
                    await trio.sleep(0.5)  # a slow Redis: the second connect waits for the claim
                    await admit(*args, **kwargs)  # type: ignore[arg-type]

                node.limits.admit = slow_admit  # type: ignore[method-assign]
                while True:  # the fleet's quarantine after a fresh Redis
                    try:
                        await manager.connect("warm")
                        break
                    except Unavailable as exc:
                        await trio.sleep(exc.details.get("retry_after", 0.1))
                answers: list[SessionStatus] = []

                async def connect() -> None:
                    answers.append(await manager.connect("x1"))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(connect)
                    nursery.start_soon(connect)
                # the second one finds the session the first made (before the fix: held
                # lease, no session yet when it checked: `unavailable` after renew_timeout)
                assert [a.session for a in answers] == ["x1", "x1"]
                assert "x1" in node.leases.held and "x1" in manager.session_ids()
