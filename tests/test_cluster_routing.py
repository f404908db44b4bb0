"""Any host answers mutations for any session (docs/cluster.md, "Routing"): three
real daemon processes with the scripted driver on one real redis-server.

A new session is placed on the least-loaded host; connect, disconnect, logout,
delete, send_text and simulate through a host that does not own the session
reach the owner and return its answer; another uid's session is
permission_denied through a non-owner too; hostile entries in a host's command
stream are refused and the host keeps serving; an owner paused past a command's
deadline does not run it when it resumes; a killed owner answers `unavailable`
within route_timeout, and at once when its heartbeat is gone.
"""

from __future__ import annotations

import signal
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import msgspec
import pytest
import trio

from wa_daemon import AsyncClient, NotFound, PermissionDenied, RateLimited, Unavailable
from wa_daemon.daemon.cluster.commands import Command, decode_answer, encode_command, reply_key, stream_key
from wa_daemon.daemon.cluster.store import RedisStore, open_store
from wa_daemon.errors import InvalidArgument, WaDaemonError
from wa_daemon.protocol import SessionStatus, State

from .helpers import make_config
from .redis_server import RedisServer
from .test_cluster import connect_when_granted
from .test_cluster_failover import Host, fleet, metric

pytestmark = pytest.mark.slow

ROUTE_TIMEOUT = 1.0
TTL = 3.0


def start(root: Any, redis: RedisServer, name: str, capacity: int) -> Host:
    return Host(root, redis, name, capacity, "--set", f"route_timeout={ROUTE_TIMEOUT}")


@contextmanager
def three_hosts() -> Iterator[tuple[RedisServer, dict[str, Host]]]:
    """a (room for 2), b (room for 5), c (room for 3)."""
    with fleet() as (redis, root, hosts):
        for name, capacity in (("a", 2), ("b", 5), ("c", 3)):
            hosts[name] = start(root, redis, name, capacity)
        yield redis, hosts


@asynccontextmanager
async def clients(hosts: dict[str, Host]) -> AsyncIterator[dict[str, AsyncClient]]:
    async with AsyncExitStack() as stack:
        yield {
            name: await stack.enter_async_context(AsyncClient(host.sock, timeout=10)) for name, host in hosts.items()
        }


async def until_every_heartbeat(wa: AsyncClient, count: int) -> None:
    while len((await wa.hosts()).hosts) < count:
        await trio.sleep(0.1)


async def local_ids(wa: AsyncClient, host: str) -> set[str]:
    """The sessions ``host`` runs (its ``list`` shows the whole fleet)."""
    return {s.session for s in await wa.list() if s.host == host}


async def until_state(wa: AsyncClient, session: str, state: State) -> None:
    while (await wa.status(session)).state != state:
        await trio.sleep(0.05)


async def send_command(store: RedisStore, host: str, method: str, params: dict[str, Any], uid: int | None) -> Any:
    """What a non-owner host sends for a caller with ``uid`` (not an admin); the owner's answer."""
    command = Command(
        id=uuid.uuid4().hex, method=method, params=msgspec.msgpack.encode(params),
        uid=uid, gid=uid, admin=False, budget_ms=5000, origin="t",
    )
    await store.client.xadd(stream_key(host), encode_command(command))  # type: ignore[arg-type]
    got = await store.client.blpop([reply_key(command.id)], 5)
    assert got is not None, "no answer"
    answer = decode_answer(got[1])
    if isinstance(answer, WaDaemonError):
        return answer
    return msgspec.msgpack.decode(answer)


async def test_placement_and_every_mutation_through_a_non_owner() -> None:
    with three_hosts() as (redis, hosts), trio.fail_after(90):
        async with clients(hosts) as wa, open_store(make_config(redis_url=redis.url)) as store:
            await until_every_heartbeat(wa["a"], 3)
            # a receives it; b has the most room: b runs it, a does not
            placed = await connect_when_granted(wa["a"], "p1")
            assert placed.host == "b" and placed.session == "p1"
            assert "p1" in await local_ids(wa["b"], "b") and "p1" not in await local_ids(wa["a"], "a")
            assert metric(hosts["a"], "wa_cluster_placed_total", where="other") >= 1  # again after a quarantine

            # mutations through c and a reach b
            await until_state(wa["b"], "p1", State.CONNECTED)  # the scripted phone scans the QR
            sent = await wa["a"].send_text("p1", "12025550111", "hello from a", "key-1")
            assert sent.to.startswith("12025550111")
            again = await wa["c"].send_text("p1", "12025550111", "hello from a", "key-1")
            assert again.id == sent.id  # idempotent on the owner: one message
            stopped = await wa["c"].disconnect("p1")
            assert (stopped.host, stopped.state) == ("b", State.STOPPED)
            assert (await wa["b"].status("p1")).state == State.STOPPED
            with pytest.raises(RateLimited) as limited:  # the owner's typed error, details and all
                await wa["c"].connect("p1")
            await trio.sleep(limited.value.retry_after)
            restarted = await wa["c"].connect("p1")
            assert restarted.host == "b" and restarted.state in (State.STARTING, State.WAITING_QR)
            await until_state(wa["b"], "p1", State.CONNECTED)
            out = await wa["a"].logout("p1")
            assert (out.host, out.state) == ("b", State.LOGGED_OUT)
            with pytest.raises(InvalidArgument, match="no running browser"):
                await wa["a"].simulate("p1", "scan")  # the owner's typed error, as it is
            await wa["c"].delete("p1")
            assert "p1" not in await local_ids(wa["b"], "b")
            while await store.holder("p1") is not None:  # the owner's writer sends the delete
                await trio.sleep(0.02)
            assert await store.record("p1") is None
            with pytest.raises(NotFound):
                await wa["c"].disconnect("p1")  # gone from the fleet: nobody owns it
            routed = sum(
                metric(hosts[h], "wa_cluster_routed_total", method=m, outcome="ok")
                for h in ("a", "c") for m in ("send_text", "disconnect", "connect", "logout", "delete")
            )
            assert routed == 7  # the placed connect, 2 send_text, disconnect, connect, logout, delete
            # rate_limited and invalid_argument: typed errors from the owner
            assert metric(hosts["c"], "wa_cluster_routed_total", method="connect", outcome="error") == 1
            assert metric(hosts["a"], "wa_cluster_routed_total", method="simulate", outcome="error") == 1
            assert metric(hosts["b"], "wa_cluster_commands_total", outcome="done") >= 9

            # permission: the owner applies the same rules as for a local caller
            created = await send_command(store, "b", "connect", {"session": "u1"}, uid=40001)
            assert isinstance(created, dict) and created["session"] == "u1", created
            refused = await send_command(store, "b", "disconnect", {"session": "u1"}, uid=40002)
            assert isinstance(refused, PermissionDenied), refused
            unknown = await send_command(store, "b", "disconnect", {"session": "u1"}, uid=None)
            assert isinstance(unknown, PermissionDenied), unknown
            mine = await send_command(store, "b", "disconnect", {"session": "u1"}, uid=40001)
            assert isinstance(mine, dict) and mine["state"] == "stopped", mine
            bad = await send_command(store, "b", "disconnect", {"session": "u1", "extra": 1}, uid=40001)
            assert isinstance(bad, InvalidArgument), bad  # params are checked by the owner too


async def test_two_connects_of_one_new_session_on_two_hosts_end_with_one_owner() -> None:
    """a and c have the same room (b less): each places a new session on itself, the
    lease decides, and the loser routes its call to the winner."""
    with fleet() as (redis, root, hosts), trio.fail_after(90):
        for name, capacity in (("a", 8), ("b", 1), ("c", 8)):
            hosts[name] = start(root, redis, name, capacity)
        async with clients(hosts) as wa:
            await until_every_heartbeat(wa["a"], 3)
            sessions = [f"r{i}" for i in range(5)]
            answers: dict[tuple[str, str], SessionStatus] = {}

            async def connect(host: str, session: str) -> None:
                answers[host, session] = await connect_when_granted(wa[host], session)

            async with trio.open_nursery() as nursery:
                for session in sessions:
                    nursery.start_soon(connect, "a", session)
                    nursery.start_soon(connect, "c", session)
            held = {name: await local_ids(wa[name], name) for name in hosts}
            for session in sessions:
                owners = [name for name, ids in held.items() if session in ids]
                assert len(owners) == 1, (session, held)
                assert answers["a", session].host == answers["c", session].host == owners[0]
            assert held["b"] == set()  # the least room: never chosen
            losers = sum(metric(hosts[h], "wa_cluster_routed_total", method="connect", outcome="ok") for h in "ac")
            # each session: at least one call was routed to its owner (the lease race's loser);
            # both, when a heartbeat between the calls made each host place it on the other
            assert len(sessions) <= losers <= 2 * len(sessions)


async def test_hostile_entries_are_refused_and_the_owner_keeps_serving() -> None:
    with three_hosts() as (redis, hosts), trio.fail_after(90):
        async with clients(hosts) as wa, open_store(make_config(redis_url=redis.url)) as store:
            await until_every_heartbeat(wa["a"], 3)
            await connect_when_granted(wa["b"], "h1")
            good = uuid.uuid4().hex
            hostile: list[dict[Any, Any]] = [
                {"c": b"\xc1garbage"},  # not msgpack
                {"c": msgspec.msgpack.encode({"id": good, "method": "connect"})},  # fields missing
                {"c": b"x", "extra": b"y"},  # an unknown field
                {"c": msgspec.msgpack.encode([1, 2, 3])},  # the wrong type
            ]
            for fields in hostile:
                await store.client.xadd(stream_key("b"), fields)
            got = await store.client.blpop([reply_key(good)], 5)  # a valid id is answered at once
            assert got is not None
            answer = decode_answer(got[1])
            assert isinstance(answer, InvalidArgument) and "refused the routed command" in answer.message
            stopped = await wa["a"].disconnect("h1")  # and b still serves
            assert (stopped.host, stopped.state) == ("b", State.STOPPED)
            assert metric(hosts["b"], "wa_cluster_commands_total", outcome="refused") == len(hostile)
            assert "cluster_command_refused" in hosts["b"].proc.output()
            # what the owner read is deleted (params may hold a message body), and the
            # stream of a host nobody sends to expires
            while await store.client.xlen(stream_key("b")) > 0:
                await trio.sleep(0.05)
            assert 0 < await store.client.pttl(stream_key("b")) <= 600_000


async def test_a_paused_owner_skips_expired_commands_and_a_killed_one_is_unavailable_in_bounded_time() -> None:
    with three_hosts() as (redis, hosts), trio.fail_after(90):
        async with clients(hosts) as wa, open_store(make_config(redis_url=redis.url)) as store:
            await until_every_heartbeat(wa["a"], 3)
            await connect_when_granted(wa["b"], "k1")

            # b paused for longer than route_timeout (but less than its fence point)
            hosts["b"].signal(signal.SIGSTOP)
            hosts["b"].frozen = True
            started = time.monotonic()
            with pytest.raises(Unavailable, match="did not answer within route_timeout"):
                await wa["a"].disconnect("k1")
            took = time.monotonic() - started
            hosts["b"].signal(signal.SIGCONT)
            hosts["b"].frozen = False
            assert ROUTE_TIMEOUT - 0.05 <= took < ROUTE_TIMEOUT + 1.0, took
            # resumed: it does not run the command whose deadline passed
            while metric(hosts["b"], "wa_cluster_commands_total", outcome="expired") < 1:
                await trio.sleep(0.05)
            assert (await wa["b"].status("k1")).state != State.STOPPED
            assert metric(hosts["b"], "wa_cluster_commands_total", outcome="done") == 0
            assert metric(hosts["a"], "wa_cluster_routed_total", method="disconnect", outcome="timeout") == 1

            # killed: unavailable within route_timeout, never a hang
            hosts["b"].proc.proc.kill()
            hosts["b"].proc.proc.wait(10)
            # the lease outlives the checks below whatever the machine's load (then it expires)
            assert await store.client.pexpire("wa:lease:k1", 4000)
            started = time.monotonic()
            with pytest.raises(Unavailable) as info:
                await wa["a"].disconnect("k1")
            took = time.monotonic() - started
            assert took < ROUTE_TIMEOUT + 1.0, took
            assert info.value.details["host"] == "b"
            print(f"killed owner: unavailable after {took:.3f} s (route_timeout {ROUTE_TIMEOUT} s)")
            # its heartbeat gone (as after lease_ttl): unavailable at once, without sending
            await store.client.delete(["wa:host:b"])
            started = time.monotonic()
            with pytest.raises(Unavailable, match="which has no heartbeat"):
                await wa["c"].disconnect("k1")
            assert time.monotonic() - started < 0.5
            assert metric(hosts["c"], "wa_cluster_routed_total", method="disconnect", outcome="dead") == 1
            # and once a survivor took it over, the same call reaches the new owner
            while True:
                try:
                    status = await wa["c"].disconnect("k1")
                    break
                except Unavailable:
                    await trio.sleep(0.1)
            assert status.host in ("a", "c")


async def test_routed_call_latency_against_a_local_one() -> None:
    """The figure in docs/performance.md: an idempotent connect (already running)
    on the owner, and through a non-owner."""
    with three_hosts() as (redis, hosts), trio.fail_after(90):
        async with clients(hosts) as wa:
            await until_every_heartbeat(wa["a"], 3)
            await connect_when_granted(wa["b"], "l1")
            timings: dict[str, list[float]] = {"local": [], "routed": []}
            for _ in range(200):
                for kind, client in (("local", wa["b"]), ("routed", wa["a"])):
                    started = time.perf_counter()
                    status = await client.connect("l1")
                    timings[kind].append(time.perf_counter() - started)
                    assert status.host == "b"
            local, routed = (statistics.median(timings[k]) for k in ("local", "routed"))
            p99 = statistics.quantiles(timings["routed"], n=100)[98]
            print(
                f"connect (already running), median of 200: local {local * 1e3:.3f} ms, "
                f"routed {routed * 1e3:.3f} ms (p99 {p99 * 1e3:.3f} ms), ratio {routed / local:.1f}"
            )
            assert routed > local  # a routed call makes at least three Redis round trips more
