"""Several daemons sharing one real redis-server (docs/cluster.md), in one trio run:
placement of a new session, fenced registry rows, `hosts`, `status.host`, the
stale writer, and a single-host daemon unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from wa_daemon import AsyncClient, RateLimited, Unavailable
from wa_daemon.daemon.app import Daemon
from wa_daemon.daemon.cluster.store import open_store
from wa_daemon.protocol import SessionStatus, State

from .helpers import make_config, running_daemon, short_tmpdir
from .redis_server import RedisServer, redis_server

TTL = 2.0


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@asynccontextmanager
async def fleet(redis: RedisServer, *hosts: str, **overrides: Any) -> AsyncIterator[dict[str, Daemon]]:
    with short_tmpdir() as tmp:
        async with AsyncExitStack() as stack:
            daemons = {}
            for host in hosts:
                (tmp / host).mkdir()
                daemons[host] = await stack.enter_async_context(
                    running_daemon(tmp / host, redis_url=redis.url, host_id=host, lease_ttl=TTL, **overrides)
                )
            yield daemons


async def connect_when_granted(wa: AsyncClient, session: str) -> SessionStatus:
    """connect, waiting out the quarantine of a fresh Redis (one lease_ttl)."""
    while True:
        try:
            return await wa.connect(session)
        except Unavailable as exc:
            assert "Redis restarted" in str(exc), exc
            await trio.sleep(exc.details["retry_after"])


async def test_a_session_runs_on_the_host_that_created_it_and_nowhere_else(redis: RedisServer) -> None:
    with trio.fail_after(30):
        async with fleet(redis, "a", "b") as daemons:
            a, b = (AsyncClient(d.socket_path) for d in daemons.values())
            async with a, b:
                status = await connect_when_granted(a, "s1")
                assert status.host == "a" and status.state == State.STARTING
                # b does not own it: its connect reaches a, and a answers (routing)
                routed = await b.connect("s1")
                assert routed.host == "a" and routed.session == "s1"
                # b lists a's session (the fleet's event stream), owned by a, not run by b
                while not (seen := await b.list()):
                    await trio.sleep(0.02)
                assert [(s.session, s.host) for s in seen] == [("s1", "a")]

                # The row reached Redis under a's lease, with its status.
                async with open_store(make_config(redis_url=redis.url)) as store:
                    while (record := await store.record("s1")) is None or not record.should_run:
                        await trio.sleep(0.05)
                    assert record.session == "s1"
                    holder = await store.holder("s1")
                    assert holder is not None and holder.endswith(" a")

                    listed = await b.hosts()
                    while len(listed.hosts) < 2 or listed.hosts[0].sessions < 1:  # the next heartbeats
                        await trio.sleep(0.1)
                        listed = await b.hosts()
                    assert listed.cluster and [h.host for h in listed.hosts] == ["a", "b"]
                    host_a = listed.hosts[0]
                    assert (host_a.capacity, host_a.sessions) == (50, 1)
                    assert 0 <= host_a.heartbeat_age < TTL

                    await a.delete("s1")
                    while await store.record("s1") is not None or await store.holder("s1") is not None:
                        await trio.sleep(0.05)
                    assert await store.session_ids() == []
                # Deleted and gone from the fleet: b may create it now, once the rate limit
                # of the attempt made on a has passed (it holds across hosts and a delete).
                with pytest.raises(RateLimited) as limited:
                    await b.connect("s1")
                assert 0 < limited.value.details["retry_after"] <= 5.0
                await trio.sleep(limited.value.details["retry_after"])
                assert (await b.connect("s1")).host == "b"


async def test_a_host_whose_lease_was_taken_stops_the_session_and_writes_nothing(redis: RedisServer) -> None:
    """The lease stolen under a's feet (what a partition looks like from a): a's next
    renewal finds another value, a evicts the session and its writes are refused."""
    with trio.fail_after(30):
        async with fleet(redis, "a") as daemons:
            async with AsyncClient(daemons["a"].socket_path) as a:
                await connect_when_granted(a, "s1")
                node = daemons["a"].node
                assert node is not None
                async with open_store(make_config(redis_url=redis.url)) as store, a.watch("s1") as events:
                    while (record := await store.record("s1")) is None or not record.should_run:
                        await trio.sleep(0.05)
                    await store.client.set("wa:lease:s1", "99999999999999999 intruder")
                    async for _ in events:
                        pass
                    assert events.end is not None and events.end.reason == "moved"
                    # the final status says why it stopped here: fenced, not a daemon shutdown
                    assert events.end.status is not None
                    assert (events.end.status.state, events.end.status.reason) == (State.STOPPED, "fenced")
                    assert [s.session for s in await a.list()] == []
                    # found by the next renewal (lost), or by a write the script refused (stale)
                    fenced = node.metrics.fenced
                    assert fenced.labels("lost")._value.get() + fenced.labels("stale")._value.get() == 1
                    row = await store.record("s1")
                    assert row is not None  # a's last row is still there, written under a's lease
                    written_under = await store.client.hget("wa:session:s1", "lease")
                    assert written_under is not None and written_under.endswith(b" a")
                    assert await store.holder("s1") == "99999999999999999 intruder"


async def test_without_redis_url_one_host_as_before(tmp_path: Path) -> None:
    with short_tmpdir() as tmp, trio.fail_after(30):
        async with running_daemon(tmp) as daemon, AsyncClient(daemon.socket_path) as wa:
            assert daemon.node is None
            status = await wa.connect("s1")
            assert status.host is None
            listed = await wa.hosts()
            assert not listed.cluster and len(listed.hosts) == 1
            assert (listed.hosts[0].capacity, listed.hosts[0].sessions) == (50, 1)


async def test_a_daemon_in_a_fleet_exposes_the_cluster_metrics(redis: RedisServer) -> None:
    import re

    from .test_guides import CLUSTER_METRICS, DOCUMENTED_METRICS

    with trio.fail_after(30):
        async with fleet(redis, "a") as daemons, AsyncClient(daemons["a"].socket_path) as wa:
            text = (await wa.metrics(prometheus=True)).prometheus or ""
            exposed = {n for n in re.findall(r"^# TYPE (wa_\w+) ", text, re.M) if not n.endswith("_created")}
            assert exposed - DOCUMENTED_METRICS == CLUSTER_METRICS
