"""Faults between a host and Redis, through a loopback TCP proxy the test controls
(tests/fault_proxy.py): cut, half-open (a black hole), delayed beyond the renewal
timeout, replies dropped. Daemons are separate processes (scripted driver) on a real
redis-server; host a reaches Redis only through the proxy, host b directly.

What must hold (docs/cluster.md, "Failure table"): a fences every session before its
lease can expire in Redis (its log's fence instant against the lease's expiry as
Redis reports it, sampled all along with PTTL), b acquires only after the fence,
never two hosts run a session in the same sampling round, and once the path is back
a writes nothing under its old tokens and takes sessions again only by takeover.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import trio

from wa_daemon import Client, Unavailable, WaDaemonError
from wa_daemon.daemon.cluster.store import ClusterError, open_store
from wa_daemon.protocol import State

from .fault_proxy import FaultProxy, fault_proxy
from .helpers import make_config
from .redis_server import RedisServer, redis_server
from .test_cluster_failover import TTL, Host, Sampler, connect_all, fleet, metric, rows_written_by, wait_for

OWNED = ["s0", "s1", "s2"]


def log_events(host: Host, event: str) -> dict[str, float]:
    """session -> when (epoch seconds) ``event`` was logged for it, first time only."""
    found: dict[str, float] = {}
    for line in host.proc.output().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("event") == event and "session" in entry:
            when = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
            found.setdefault(entry["session"], when)
    return found


class LeaseWatch:
    """Redis's own view of each lease, sampled in a thread: (wall time, PTTL ms) rounds,
    over a raw RESP connection so it never shares anything with the daemons."""

    def __init__(self, sock: Path, sessions: list[str]) -> None:
        self.sock = sock
        self.sessions = sessions
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(self.sock))
            reader = s.makefile("rb")
            while not self._stop.is_set():
                at = time.time()
                s.sendall(b"".join(f"PTTL wa:lease:{x}\r\n".encode() for x in self.sessions))
                pttl = {x: int(reader.readline()[1:]) for x in self.sessions}
                self.samples.append((at, pttl))
                time.sleep(0.01)

    def expiry_at(self, session: str, instant: float) -> float:
        """When the lease expires as Redis said at the last sample before ``instant``;
        fails if Redis had no lease at that sample (it expired before the instant)."""
        before = [(at, p[session]) for at, p in self.samples if at <= instant]
        assert before, f"no sample of {session} before {instant}"
        at, pttl = before[-1]
        assert pttl > 0, f"{session}: Redis had no lease (PTTL {pttl}) at the last sample before the fence"
        return at + pttl / 1000

    def __enter__(self) -> LeaseWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


async def test_the_proxy_cuts_delays_swallows_and_passes(tmp_path: Path) -> None:
    """The proxy itself, against a real redis-server through the store."""
    with redis_server() as redis, trio.fail_after(30):
        proxy = FaultProxy(redis.sock)
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            async with open_store(make_config(redis_url=proxy.url, lease_ttl=2.5)) as store:  # calls time out at 0.5 s
                assert await store.session_ids() == []
                proxy.set_mode("delay", 0.2)
                started = trio.current_time()
                assert await store.session_ids() == []
                assert trio.current_time() - started >= 0.4  # the request and the reply, each held 0.2 s
                proxy.set_mode("drop-replies")  # on the pooled connection: applied, never answered
                with pytest.raises(ClusterError):
                    await store._call("test", store.client.sadd("wa:sessions", ["x"]))
                for mode in ("cut", "half-open"):
                    proxy.set_mode(mode)  # type: ignore[arg-type]
                    started = trio.current_time()
                    with pytest.raises(ClusterError):
                        await store.session_ids()
                    assert trio.current_time() - started < 2
                proxy.set_mode("pass")
                with trio.fail_after(5):
                    while True:  # the pool drops broken connections and opens new ones
                        try:
                            assert await store.session_ids() == ["x"]
                            break
                        except ClusterError:
                            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cut", "half-open", "delay", "drop-replies"])
def test_an_owner_cut_off_from_redis_fences_before_its_leases_can_expire(mode: str) -> None:
    with fleet() as (redis, root, hosts), fault_proxy(redis.sock) as proxy:
        hosts["a"] = Host(root, redis, "a", capacity=3, url=proxy.url)
        connect_all(hosts["a"], OWNED)
        wait_for("a runs its sessions", lambda: hosts["a"].connected() == set(OWNED), 30)
        hosts["b"] = Host(root, redis, "b", capacity=3)
        with Sampler(hosts) as sampler, LeaseWatch(redis.sock, OWNED) as leases:
            time.sleep(TTL / 2)  # some renewals through the proxy, seen by the watch
            cut_at = time.time()
            # delay: each chunk held longer than the whole renewal timeout (lease_ttl / 5)
            proxy.set_mode(mode, delay=TTL / 5 * 2)  # type: ignore[arg-type]
            wait_for("b runs a's sessions", lambda: hosts["b"].connected() == set(OWNED), TTL * 3 + 15)
            fenced = log_events(hosts["a"], "cluster_session_fenced")
            taken = log_events(hosts["b"], "cluster_session_taken_over")
            assert set(fenced) == set(OWNED) and set(taken) == set(OWNED), (fenced, taken)
            for session in OWNED:
                expiry = leases.expiry_at(session, fenced[session])
                ahead = expiry - fenced[session]
                print(f"{mode}: {session} fenced {fenced[session] - cut_at:.2f} s after the fault, "
                      f"{ahead:.2f} s before Redis's expiry; taken over by b {taken[session] - fenced[session]:.2f} s after")
                assert ahead > 0, (session, ahead)
                assert taken[session] > fenced[session]

            # The path comes back: a re-checks, writes nothing under its old leases and
            # takes sessions only through takeover (b holds them all, so: none).
            proxy.set_mode("pass")
            wait_for("a heartbeats again", lambda: a_listed(hosts["a"]), TTL * 3 + 10)
            time.sleep(TTL)
            assert hosts["a"].running() == {}
            assert sampler.rounds > 20
        assert sampler.overlaps == [], sampler.overlaps
        written = trio.run(rows_written_by, redis)
        assert {s: written[s] for s in OWNED} == dict.fromkeys(OWNED, "b")
        assert sum(metric(hosts["a"], "wa_cluster_fenced_total", reason=r) for r in ("expiring", "lost")) == 3
        assert "cluster_write_stale" not in hosts["a"].proc.output()


def a_listed(host: Host) -> bool:
    try:
        with Client(host.sock, timeout=5) as wa:
            return "a" in {h.host for h in wa.hosts().hosts}
    except WaDaemonError:
        return False


@pytest.mark.slow
def test_mutations_while_redis_is_unreachable_answer_unavailable_and_lose_nothing() -> None:
    """Cut a's path to Redis while it owns s0 and s1 (well before the fence point:
    lease_ttl 8 s). A row queued before a noticed is kept and written when Redis
    returns; once a knows Redis is unreachable, every mutation answers `unavailable`
    with the reason at once and changes nothing (s0 keeps running); when the path
    returns, the same calls work, under a's still-valid leases."""
    ttl = 8.0
    with fleet() as (redis, root, hosts), fault_proxy(redis.sock) as proxy:
        hosts["a"] = Host(root, redis, "a", capacity=3, url=proxy.url, ttl=ttl)
        connect_all(hosts["a"], ["s0", "s1"])
        wait_for("a runs s0 and s1", lambda: hosts["a"].connected() == {"s0", "s1"}, 30)
        with Client(hosts["a"].sock, timeout=10) as wa:
            proxy.set_mode("cut")
            started = time.monotonic()
            try:
                wa.disconnect("s1")  # most likely before a noticed: queued
                queued = True
            except Unavailable as exc:
                assert "Redis is unreachable" in str(exc), exc
                queued = False
            with pytest.raises(Unavailable, match="the fleet's Redis cannot be asked"):
                wa.connect("n1")  # a new session needs a lease: Redis must answer
            for call in (wa.disconnect, wa.logout, wa.delete):
                with pytest.raises(Unavailable, match=r"the fleet's Redis is unreachable \(for [0-9.]+ s: ") as info:
                    call("s0")
                assert info.value.details == {"session": "s0"}
            assert time.monotonic() - started < ttl / 5 * 4 - 1  # all answered before the fence point
            assert wa.status("s0").state == State.CONNECTED  # nothing changed
            assert metric(hosts["a"], "wa_cluster_redis_unreachable_seconds") > 0

            proxy.set_mode("pass")
            wait_for("disconnect s0 is accepted again", lambda: accepted(wa, "s0"), ttl / 5 * 3)
            if not queued:
                wa.disconnect("s1")
            assert metric(hosts["a"], "wa_cluster_redis_unreachable_seconds") == 0
        assert "cluster_redis_unreachable" in hosts["a"].proc.output()
        assert "cluster_redis_reachable" in hosts["a"].proc.output()
        rows = trio.run(rows_of, redis)
        assert rows == {"s0": (False, "a"), "s1": (False, "a")}, rows
        assert hosts["a"].running() == {}
        assert metric(hosts["a"], "wa_cluster_fenced_total", reason="expiring") == 0
        print(f"s1's disconnect {'queued before a noticed, written when Redis returned' if queued else 'refused'}")


def accepted(wa: Client, session: str) -> bool:
    try:
        wa.disconnect(session)
        return True
    except Unavailable:
        return False


async def rows_of(redis: RedisServer) -> dict[str, tuple[bool, str]]:
    """Each session's should_run in Redis and the host whose lease wrote it, once the
    writer has sent what it queued."""
    with trio.fail_after(10):
        async with open_store(make_config(redis_url=redis.url)) as store:
            while True:
                found = {}
                for session in await store.session_ids():
                    record = await store.record(session)
                    assert record is not None
                    lease = await store.client.hget(store.session_key(session), "lease")
                    found[session] = (record.should_run, (lease or b"").decode().partition(" ")[2])
                if all(not run for run, _ in found.values()):
                    return found
                await trio.sleep(0.1)
