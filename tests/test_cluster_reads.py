"""Reads and watch of any session on any host (docs/cluster.md, "Events and reads on any host").

Three scripted daemon processes on one real redis-server. A session runs on one
host; `status`, `list`, `history` and `qr` on the two others answer for it with
`host` the owner; a watch of every session on another host sees its events with
the same QR coalescing as on the owner. Redis killed: the reads still answer,
marked `stale`; Redis back: `stale` false again.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest
import trio

from wa_daemon import AsyncClient, NotFound, Unavailable, WaDaemonError
from wa_daemon.daemon.cluster.store import open_store
from wa_daemon.protocol import QrUpdated, Snapshot, State, StateChanged

from .helpers import DaemonProcess, make_config, short_tmpdir
from .redis_server import RedisServer, redis_server

pytestmark = pytest.mark.slow

TTL = 3.0
QR_EVERY = 0.25  # the scripted page's QR refresh
QR_INTERVAL = 1.0  # watch_qr_interval: at most one QR per second per watcher and session


class Host:
    def __init__(self, root: Path, redis: RedisServer, host: str) -> None:
        self.id = host
        (root / host).mkdir()
        self.sock = root / host / "d.sock"
        self.proc = DaemonProcess(
            self.sock, "--driver", "scripted",
            "--set", f"redis_url={redis.url}", "--set", f"host_id={host}", "--set", f"lease_ttl={TTL}",
            "--set", f"watch_qr_interval={QR_INTERVAL}",
            "--set", "scripted.launch_delay=0.1", "--set", "scripted.auth_delay=0.1",
            "--set", f"scripted.first_qr_ttl={QR_EVERY}", "--set", f"scripted.qr_ttl={QR_EVERY}",
            "--set", "scripted.qr_refs_per_cycle=1000",
        )

    def client(self) -> AsyncClient:
        return AsyncClient(self.sock, timeout=10)


@contextmanager
def fleet(*names: str) -> Iterator[tuple[RedisServer, dict[str, Host]]]:
    with redis_server() as redis, short_tmpdir() as root:
        hosts: dict[str, Host] = {}
        try:
            for name in names:
                hosts[name] = Host(root, redis, name)
            for host in hosts.values():
                host.proc.wait_ready()
            yield redis, hosts
        finally:
            for host in hosts.values():
                host.proc.stop()
                print(f"---- host {host.id}\n{host.proc.output()[-5000:]}")  # shown when the test fails


async def connect(wa: AsyncClient, session: str) -> None:
    while True:
        try:
            await wa.connect(session)
            return
        except Unavailable as exc:  # a fresh Redis grants no lease for one TTL
            assert "Redis restarted" in str(exc), exc
            await trio.sleep(exc.details["retry_after"])


async def until(what: str, check: object, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not await check():  # type: ignore[operator]
            await trio.sleep(0.02)


def test_any_host_reads_and_watches_another_hosts_session() -> None:
    with fleet("h1", "h2", "h3") as (redis, hosts):
        trio.run(_reads_and_watch, redis, hosts)


async def _reads_and_watch(redis: RedisServer, hosts: dict[str, Host]) -> None:
    with trio.fail_after(90):
        async with hosts["h1"].client() as h1, hosts["h2"].client() as h2, hosts["h3"].client() as h3:
            # A watch of every session on h3, open before h1's session exists.
            # Another on h1, the owner, for reference.
            seen: list[object] = []
            on_owner: list[object] = []
            async with (
                h3.watch(timeout=60) as events, h1.watch(timeout=60) as owner_events, trio.open_nursery() as nursery
            ):
                async def collect(events: object, into: list[object]) -> None:
                    async for event in events:  # type: ignore[attr-defined]
                        into.append(event)

                nursery.start_soon(collect, events, seen)
                nursery.start_soon(collect, owner_events, on_owner)
                await h3.ping()  # the watch requests went first on these connections: registered
                await h1.ping()
                await connect(h1, "w1")
                await until("h1's session shows a QR", lambda: _state(h1, "w1", State.WAITING_QR))
                await trio.sleep(2.2)  # ~9 QR refreshes on the page
                qr_on_owner = await h1.qr("w1")
                await h1.simulate("w1", "scan")
                await until("w1 connected, seen on h3", lambda: _true(any(
                    isinstance(e, StateChanged) and e.status.session == "w1" and e.status.state == State.CONNECTED
                    for e in seen
                )))
                nursery.cancel_scope.cancel()

            states = [e.transition.to_state for e in seen if isinstance(e, StateChanged) and e.status.session == "w1"]
            assert states[0] == State.STARTING and states[-1] == State.CONNECTED and State.WAITING_QR in states, states
            assert all(e.status.host == "h1" for e in seen if isinstance(e, StateChanged))
            qrs = [e.qr for e in seen if isinstance(e, QrUpdated)]
            owner_qrs = [e.qr for e in on_owner if isinstance(e, QrUpdated)]
            print(f"\nQR seqs seen on h3: {[q.seq for q in qrs]}, on the owner h1: {[q.seq for q in owner_qrs]}")
            assert abs(len(qrs) - len(owner_qrs)) <= 1
            # coalesced as on the owner: at most one per watch_qr_interval, though the page made ~9
            assert qr_on_owner.seq >= 6 and 1 <= len(qrs) <= 2.2 / QR_INTERVAL + 2, (qr_on_owner.seq, len(qrs))
            assert [q.seq for q in qrs] == sorted(q.seq for q in qrs) and qrs[-1].seq > len(qrs)
            assert not any(isinstance(e, Snapshot) and e.status.session == "w1" for e in seen)

            # status, list, history, qr of h2's session, asked on h1 and h3
            await connect(h2, "s2")
            await until("s2 waits for its QR", lambda: _state(h2, "s2", State.WAITING_QR))
            for wa in (h1, h3):
                await until("s2's QR reached the other hosts", lambda wa=wa: _same_qr(wa, h2, "s2"))
            await h2.simulate("s2", "scan")
            await until("s2 connected", lambda: _state(h2, "s2", State.CONNECTED))
            owner = await h2.status("s2")
            expected = [(t.from_state, t.to_state, t.reason) for t in await h2.history("s2")]
            for wa in (h1, h3):
                await until("s2 connected, seen elsewhere", lambda wa=wa: _state(wa, "s2", State.CONNECTED))
                status = await wa.status("s2")
                assert (status.host, status.owner_uid, status.stale, status.since) == ("h2", 0, False, owner.since)
                listed = {s.session: s for s in await wa.list()}
                assert set(listed) == {"w1", "s2"} and listed["s2"].host == "h2" and listed["w1"].host == "h1"
                assert [(t.from_state, t.to_state, t.reason) for t in await wa.history("s2")] == expected
                with pytest.raises(NotFound, match="has no QR code"):
                    await wa.qr("s2")
            print(f"\nQRs made by h1's page: {qr_on_owner.seq}; seen by the watch on h3: {len(qrs)}")
            await _figures(hosts)

            # Hostile entries in the stream: refused, counted, and the hosts go on
            async with open_store(make_config(redis_url=redis.url)) as store:
                await store.client.xadd("wa:events", {"garbage": "\xff" * 100})
                await store.client.xadd("wa:events", {"v": "1", "host": "h9", "src": "h9#1", "seq": "1",
                                                      "kind": "event", "session": "s2", "uid": "",
                                                      "data": '{"type": "state", "status": 7}'})
            for wa in (h1, h3):
                await until("both refused", lambda wa=wa: _refused(wa, 2))
                assert (await wa.status("s2")).host == "h2"

            # Redis killed: the reads still answer, from the last known state, marked stale
            redis.stop()
            await until("h3 marks s2 stale", lambda: _stale(h3, "s2", True))
            listed = {s.session: s for s in await h3.list()}
            assert listed["s2"].stale and listed["s2"].state == State.CONNECTED and listed["s2"].host == "h2"
            assert (await h1.status("s2")).stale
            assert [t.to_state for t in await h1.history("s2")][-1] == State.CONNECTED
            # Redis back (with its data): the tailers resync, stale is false again
            redis.restart(keep_data=True)
            for wa in (h1, h3):
                await until("stale is false again", lambda wa=wa: _stale(wa, "s2", False), TTL * 4 + 10)


async def _refused(wa: AsyncClient, count: int) -> bool:
    samples = (await wa.metrics()).samples
    return sum(s.value for s in samples if s.name == "wa_cluster_events_refused_total") == count


async def _true(value: bool) -> bool:
    return value


async def _state(wa: AsyncClient, session: str, state: State) -> bool:
    try:
        return (await wa.status(session)).state == state
    except WaDaemonError:
        return False


async def _stale(wa: AsyncClient, session: str, stale: bool) -> bool:
    try:
        return (await wa.status(session)).stale == stale
    except WaDaemonError:
        return False


async def _same_qr(wa: AsyncClient, owner: AsyncClient, session: str) -> bool:
    try:
        return await wa.qr(session) == await owner.qr(session)
    except WaDaemonError:
        return False


async def _figures(hosts: dict[str, Host]) -> None:
    """status latency on a non-owner vs the owner; watch event latency across hosts vs the same host."""
    async with hosts["h1"].client() as h1, hosts["h2"].client() as h2, hosts["h3"].client() as h3:
        timings: dict[str, list[float]] = {"owner": [], "other": []}
        for _ in range(300):
            for name, wa in (("owner", h2), ("other", h3)):
                started = time.perf_counter()
                await wa.status("s2")
                timings[name].append(time.perf_counter() - started)
        owner, other = (statistics.median(timings[k]) * 1e3 for k in ("owner", "other"))
        print(f"status p50: owner {owner:.3f} ms, non-owner {other:.3f} ms, ratio {other / owner:.2f}")

        lat: dict[str, list[float]] = {"same": [], "across": []}
        async with h1.watch(timeout=60) as same, h3.watch(timeout=60) as across, trio.open_nursery() as nursery:
            async def measure(name: str, events: object) -> None:
                async for event in events:  # type: ignore[attr-defined]
                    if isinstance(event, StateChanged) and event.status.session.startswith("lat"):
                        lat[name].append((datetime.now(timezone.utc) - event.transition.at).total_seconds())

            nursery.start_soon(measure, "same", same)
            nursery.start_soon(measure, "across", across)
            await trio.sleep(0.3)
            for i in range(10):
                await connect(h1, f"lat{i}")  # starting, then waiting_qr: two events each
            await until("every event arrived", lambda: _true(len(lat["across"]) >= 20 and len(lat["same"]) >= 20))
            nursery.cancel_scope.cancel()
        same_ms, across_ms = (statistics.median(lat[k]) * 1e3 for k in ("same", "across"))
        print(f"watch event latency p50: same host {same_ms:.2f} ms, across hosts {across_ms:.2f} ms "
              f"(max {max(lat['across']) * 1e3:.2f} ms)")


async def test_another_uid_sees_nothing_of_a_remote_session() -> None:
    """Ownership holds across hosts: host b knows a's session's owner uid from the
    stream, so another uid's watch of every session, list and status on b leave it
    out (daemons in this trio run, so the callers can be any uid)."""
    from wa_daemon.daemon.sessions.caller import Caller
    from wa_daemon.errors import PermissionDenied

    from .test_cluster import fleet as inproc_fleet

    owner, other = Caller.user(40001), Caller.user(40002)
    with redis_server() as redis, trio.fail_after(30):
        async with inproc_fleet(redis, "a", "b") as daemons:
            a, b = daemons["a"].manager, daemons["b"].manager
            assert a is not None and b is not None
            mine, _ = b.subscribe(None, (), owner)
            theirs, _ = b.subscribe(None, (), other)
            while True:
                try:
                    await a.connect("p1", owner_uid=40001, caller=owner)
                    break
                except Unavailable as exc:
                    await trio.sleep(exc.details["retry_after"])
            with trio.fail_after(10):
                event = await mine.next()
            assert isinstance(event, StateChanged) and event.status.session == "p1" and event.status.host == "a"
            assert b.status("p1", owner).owner_uid == 40001
            assert [s.session for s in b.list(caller=owner)] == ["p1"]
            assert b.list(caller=other) == []
            with pytest.raises(PermissionDenied):
                b.status("p1", other)
            with pytest.raises(PermissionDenied):
                b.subscribe("p1", (), other)
            await trio.sleep(0.5)  # more of p1's events reach b meanwhile
            with trio.move_on_after(0.2):
                await theirs.next()
                raise AssertionError("another uid's watch saw p1")
            b.unsubscribe(mine)
            b.unsubscribe(theirs)


async def test_a_host_that_missed_entries_resyncs() -> None:
    """Entries of a publisher with a jump in its seq (trimmed before this host read
    them): the host counts a gap, re-reads the rows and the stream, and goes on."""
    from wa_daemon.daemon.cluster.events import Entry, encode_entry
    from wa_daemon.protocol import SessionStatus, Transition

    from .test_cluster import fleet as inproc_fleet

    def entry(seq: int, state: State) -> dict[str, bytes]:
        status = SessionStatus("x1", state, datetime.now(timezone.utc), 0, owner_uid=7, host="h9")
        change = StateChanged(Transition(status.since, State.STOPPED, state, "test", 0), status)
        return encode_entry(Entry("h9", "h9#run", seq, "event", "x1", 7, event=change))

    with redis_server() as redis, trio.fail_after(30):
        async with inproc_fleet(redis, "a") as daemons, open_store(make_config(redis_url=redis.url)) as store:
            node = daemons["a"].node
            assert node is not None
            resyncs = node.fanout.metrics.resyncs
            while node.fanout.cache.behind:
                await trio.sleep(0.02)
            await store.client.xadd("wa:events", entry(1, State.STARTING))
            await store.client.xadd("wa:events", entry(2, State.WAITING_QR))
            while node.remote.status("x1") is None or node.remote.status("x1").state != State.WAITING_QR:  # type: ignore[union-attr]
                await trio.sleep(0.02)
            assert resyncs.labels("gap")._value.get() == 0
            await store.client.xadd("wa:events", entry(9, State.CONNECTED))  # 3 to 8 never seen
            while resyncs.labels("gap")._value.get() < 1 or node.fanout.cache.behind:
                await trio.sleep(0.02)
            status = node.remote.status("x1")
            assert status is not None and status.state == State.CONNECTED and not status.stale
            assert [t.to_state for t in node.remote.history("x1") or []] == [
                State.STARTING, State.WAITING_QR, State.CONNECTED
            ]
