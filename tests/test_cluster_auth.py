"""Auth that moves with the session (docs/cluster.md, "Auth snapshots"): scripted daemons
as separate processes on one real redis-server. A host killed with ``kill -9``: its
linked sessions come back ``connected`` on the survivors without a QR; ``logout`` and
``delete`` remove the snapshot; a stale lease writes none; hostile snapshots in Redis are
refused with a clear error and the host keeps running."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import trio

from wa_daemon import Client
from wa_daemon.daemon.browser.auth_snapshot import pack_files
from wa_daemon.daemon.cluster.snapshots import SnapshotStore
from wa_daemon.daemon.cluster.store import open_store
from wa_daemon.protocol import State

from .helpers import DaemonProcess, make_config
from .redis_server import RedisServer
from .test_cluster_drain import draining, wactl
from .test_cluster_failover import Host, Sampler, connect_all, fleet, metric, wait_for

pytestmark = pytest.mark.slow

SESSIONS = ["s0", "s1", "s2"]


async def _redis(redis: RedisServer, work: object) -> object:
    with trio.fail_after(10):
        async with open_store(make_config(redis_url=redis.url)) as store:
            return await work(store, SnapshotStore(store))  # type: ignore[operator]


def snapshots(redis: RedisServer) -> dict[str, int]:
    """Session -> size of its stored snapshot."""

    async def work(store: object, snaps: SnapshotStore) -> dict[str, int]:
        found = {}
        for key in await snaps.store.client.keys("wa:auth:*"):
            if await snaps.store.client.type(key) not in ("hash", b"hash"):
                continue  # the hostile test's wrong type
            sizes = await snaps.store.client.hget(key, "size")
            found[key.decode().removeprefix("wa:auth:")] = int(sizes or 0)
        return found

    return trio.run(_redis, redis, work)  # type: ignore[return-value]


def link_on(host: Host, sessions: list[str]) -> None:
    connect_all(host, sessions)
    with Client(host.sock, timeout=10) as wa:
        wait_for("QRs shown", lambda: all(wa.status(s).state == State.WAITING_QR for s in sessions), 20)
        for s in sessions:
            wa.simulate(s, "scan")  # the phone scans the QR
    wait_for("all connected", lambda: host.connected() == set(sessions), 20)


def history_states(host: Host, session: str) -> list[State]:
    with Client(host.sock, timeout=5) as wa:
        return [t.to_state for t in wa.history(session)]


def test_a_killed_hosts_linked_sessions_come_back_without_a_qr_and_logout_deletes_the_snapshot() -> None:
    with fleet() as (redis, root, hosts):
        for name in "abc":
            hosts[name] = Host(root, redis, name, capacity=4, auto_scan=False)
        everyone = [*SESSIONS, "s3"]
        link_on(hosts["a"], everyone)
        wait_for("a snapshot of every session", lambda: set(snapshots(redis)) == set(everyone), 15)
        sizes = snapshots(redis)
        assert all(0 < n < 1000 for n in sizes.values()), sizes

        hosts["a"].proc.proc.kill()
        hosts["a"].proc.proc.wait(10)
        survivors = [hosts["b"], hosts["c"]]
        took = wait_for(
            "b and c run every session, connected",
            lambda: set().union(*(h.connected() for h in survivors)) == set(everyone),
            3 + 20,
        )
        print(f"failover after kill -9 without a QR: {len(everyone)} sessions connected again {took:.2f} s later")
        owner = {s: h for h in survivors for s in h.running()}
        for s in everyone:
            states = history_states(owner[s], s)
            assert State.WAITING_QR not in states and states[-1] == State.CONNECTED, (s, states)
            with Client(owner[s].sock, timeout=5) as wa:
                assert wa.status(s).linked
        restored = sum(metric(h, "wa_cluster_auth_snapshot_restores_total") for h in survivors)
        assert restored == len(everyone)
        for h in (*survivors, hosts["a"]):
            assert b"WAAUTH" not in h.proc.output().encode(), "snapshot bytes reached a log line"

        # logout ends the login: the snapshot goes; the phone unlinking it (logged_out)
        # and delete: the same
        with Client(owner["s0"].sock, timeout=10) as wa:
            wa.logout("s0")
        with Client(owner["s3"].sock, timeout=10) as wa:
            wa.simulate("s3", "logout")
            wait_for("s3 logged out", lambda: wa.status("s3").state == State.LOGGED_OUT, 10)
        with Client(owner["s1"].sock, timeout=10) as wa:
            wa.delete("s1")
        wait_for("only s2 has a snapshot", lambda: set(snapshots(redis)) == {"s2"}, 10)

        # a clean stop of s2's owner stores it again (why=stopped or release) and c or b
        # restores it after the daemon is gone
        stopper = owner["s2"]
        writes_before = sum(metric(stopper, "wa_cluster_auth_snapshot_writes_total", why=w) for w in ("stopped", "release"))
        assert writes_before == 0
        with Client(stopper.sock, timeout=10) as wa:
            wa.disconnect("s2")
        wait_for(
            "a snapshot on the clean stop",
            lambda: metric(stopper, "wa_cluster_auth_snapshot_writes_total", why="stopped") == 1,
            10,
        )
        assert "s2" in snapshots(redis)


def hostile(redis: RedisServer) -> None:
    async def work(store: object, snaps: SnapshotStore) -> None:
        client = snaps.store.client
        good = await client.hget(snaps.key("s0"), "data")
        assert good is not None and good.startswith(b"WAAUTH")
        corrupted = good[:-4] + bytes(4)
        await client.hset(snaps.key("s0"), {"data": corrupted, "size": str(len(corrupted))})
        await client.delete([snaps.key("s1")])
        await client.rpush(snaps.key("s1"), [b"not", b"a", b"hash"])  # a wrong type
        escape = pack_files([("Default/IndexedDB/../../../../escaped", b"x")])
        await client.hset(snaps.key("s2"), {"data": escape, "size": str(len(escape))})

    trio.run(_redis, redis, work)


def test_hostile_snapshots_are_refused_the_host_keeps_running_and_a_stale_lease_writes_none() -> None:
    with fleet() as (redis, root, hosts):
        hosts["a"] = Host(root, redis, "a", capacity=4, auto_scan=False)
        hosts["b"] = Host(root, redis, "b", capacity=4, auto_scan=False)
        link_on(hosts["a"], SESSIONS)
        wait_for("a snapshot of every session", lambda: set(snapshots(redis)) == set(SESSIONS), 15)
        hosts["a"].proc.proc.kill()
        hosts["a"].proc.proc.wait(10)
        hostile(redis)  # before b's takeover (the leases last 3 s more)

        b = hosts["b"]
        wait_for("b runs every session, waiting for a QR", lambda: all(
            st == State.WAITING_QR for st in b.running().values()) and set(b.running()) == set(SESSIONS), 25)
        with Client(b.sock, timeout=5) as wa:
            wa.ping()
            assert not any(wa.status(s).linked for s in SESSIONS)
        assert metric(b, "wa_cluster_auth_snapshot_failures_total", op="restore", reason="refused") == 3
        log = b.proc.output()
        assert "checksum mismatch (corrupted)" in log
        assert "wa:auth:s1 is not a hash" in log
        assert "points outside the profile" in log
        assert not list(root.rglob("escaped"))

        # The session links again with a QR, and its new snapshot replaces the hostile one.
        with Client(b.sock, timeout=10) as wa:
            wa.simulate("s0", "scan")
        wait_for("s0 connected and stored", lambda: "s0" in b.connected() and snapshots(redis).get("s0", 0) > 0, 15)

        # A writer whose lease is not the current one stores nothing and deletes nothing.
        async def stale(store: object, snaps: SnapshotStore) -> None:
            before = await snaps.get("s0")
            assert before is not None
            assert not await snaps.put("s0", "1 a", b"WAAUTH-from-the-old-owner")
            assert not await snaps.delete("s0", "1 a")
            assert await snaps.get("s0") == before

        trio.run(_redis, redis, stale)
        time.sleep(0.5)
        assert b.proc.proc.poll() is None


class ConfiguredHost(Host):
    """A scripted host run from a configuration file, so a test can change it and SIGHUP."""

    def __init__(self, root: Path, redis: RedisServer, host: str, cap: int) -> None:
        self._place(root, host)
        self.redis = redis
        self.config = self.dir / "wa.toml"
        self.write_config(cap)
        self.proc = DaemonProcess(self.sock, "--config", str(self.config))
        self.proc.wait_ready()

    def write_config(self, cap: int) -> None:
        self.config.write_text(
            f'driver = "scripted"\nredis_url = "{self.redis.url}"\nhost_id = "{self.id}"\nlease_ttl = 3\n'
            f"auth_snapshot_max_bytes = {cap}\n[scripted]\nlaunch_delay = 0.2\nauth_delay = 0.2\n"
        )


def test_a_snapshot_over_the_cap_is_not_stored_the_session_runs_and_the_cap_reloads() -> None:
    with fleet() as (redis, root, hosts):
        a = hosts["a"] = ConfiguredHost(root, redis, "a", cap=64)  # a scripted snapshot is ~190 bytes
        link_on(a, ["s0"])
        wait_for(
            "refused as too big",
            lambda: metric(a, "wa_cluster_auth_snapshot_failures_total", op="write", reason="too_big") == 1,
            10,
        )
        assert snapshots(redis) == {} and a.connected() == {"s0"}
        assert "cluster_auth_snapshot_failed" in a.proc.output()
        a.write_config(1 << 20)
        a.signal(signal.SIGHUP)
        wait_for("reloaded", lambda: "config_reloaded" in a.proc.output(), 10)
        with Client(a.sock, timeout=10) as wa:
            wa.disconnect("s0")  # a clean stop stores it, under the new cap
        wait_for("stored after the reload", lambda: "s0" in snapshots(redis), 10)


def no_qr_on_the_new_owners(hosts: list[Host], sessions: list[str]) -> dict[str, Host]:
    """Every session connected on one of ``hosts``, linked, with no QR in its history
    there; returns session -> owner."""
    owner = {s: h for h in hosts for s in h.running()}
    for s in sessions:
        states = history_states(owner[s], s)
        assert State.WAITING_QR not in states and states[-1] == State.CONNECTED, (s, owner[s].id, states)
        with Client(owner[s].sock, timeout=5) as wa:
            assert wa.status(s).linked
    return owner


def test_drain_and_drain_on_stop_move_linked_sessions_without_a_qr() -> None:
    # nobody scans a QR: a session that needed one would stay waiting_qr
    with fleet() as (redis, root, hosts):
        hosts["a"] = Host(root, redis, "a", capacity=4, auto_scan=False)  # alone: it holds them all
        link_on(hosts["a"], SESSIONS)
        hosts["b"] = Host(root, redis, "b", 4, "--set", "drain_on_stop=true", "--set", "shutdown_timeout=20",
                          auto_scan=False)
        hosts["c"] = Host(root, redis, "c", capacity=4, auto_scan=False)
        others = [hosts["b"], hosts["c"]]
        with Sampler(hosts) as sampler:
            started = time.monotonic()
            done = wactl(hosts["c"], "drain", "a", "--wait", "--timeout", "45")
            drained = time.monotonic() - started
            assert done.returncode == 0, done.stderr
            took = wait_for(
                "b and c run every session, connected",
                lambda: set().union(*(h.connected() for h in others)) == set(SESSIONS), 30,
            )
            print(f"drain without a QR: a held none {drained:.2f} s after `wactl drain a --wait`; "
                  f"all {len(SESSIONS)} connected on b and c {drained + took:.2f} s after it")
            owner = no_qr_on_the_new_owners(others, SESSIONS)
            # before_release stored each snapshot as the lease was given up
            assert metric(hosts["a"], "wa_cluster_auth_snapshot_writes_total", why="release") == len(SESSIONS)

            # a takes sessions again; SIGTERM of b (drain_on_stop) hands b's to a and c
            assert wactl(hosts["c"], "drain", "a", "--cancel").returncode == 0
            wait_for("a takes sessions again", lambda: draining(hosts["c"], "a") == (False, 0), 15)
            moved = sorted(s for s, h in owner.items() if h.id == "b")
            assert moved, owner  # b took a share
            started = time.monotonic()
            hosts["b"].signal(signal.SIGTERM)
            rest = [hosts["a"], hosts["c"]]
            took = wait_for(
                "a and c run every session, connected",
                lambda: set().union(*(h.connected() for h in rest)) == set(SESSIONS), 3 + 20,
            )
            assert hosts["b"].proc.proc.wait(20) == 0
            print(f"drain_on_stop without a QR: {len(moved)} sessions connected on a and c {took:.2f} s after SIGTERM")
            no_qr_on_the_new_owners(rest, SESSIONS)
            assert sampler.rounds > 20
        assert sampler.overlaps == [], sampler.overlaps
