"""Joining a fleet (cluster/join.py) with real daemon processes on a real redis-server:
a second live daemon under a host_id already in use, and a daemon whose lease_ttl is
not the fleet's, refuse to start (exit code 78, a clear message); a daemon restarted
under its own host_id right after a kill -9 joins (the dead one's heartbeat is not
renewed)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from wa_daemon import Client, Unavailable
from wa_daemon.daemon.cluster.store import HostBeat, open_store
from wa_daemon.daemon.main import EXIT_CONFIG

from .fault_proxy import fault_proxy
from .helpers import DaemonProcess, make_config
from .redis_server import RedisServer, redis_server
from .test_cluster import fleet as fleet_in_process
from .test_cluster_failover import TTL, Host, fleet, metric, wait_for


def refused(root: Path, redis: RedisServer, host: str, ttl: float, timeout: float = 30) -> tuple[int, str, float]:
    """Start a daemon that should refuse to join: its exit code, output, and how long it took."""
    directory = root / f"refused-{host}-{ttl:g}"
    directory.mkdir()
    daemon = DaemonProcess(
        directory / "d.sock", "--driver", "scripted", "--set", f"redis_url={redis.url}",
        "--set", f"host_id={host}", "--set", f"lease_ttl={ttl}",
    )
    started = time.monotonic()
    code = daemon.proc.wait(timeout)
    return code, daemon.output(), time.monotonic() - started


@pytest.mark.slow
def test_a_host_id_in_use_or_another_lease_ttl_refuses_to_join() -> None:
    with fleet() as (redis, root, hosts):
        hosts["a"] = Host(root, redis, "a", capacity=2)
        time.sleep(TTL / 5 * 1.5)  # a's first heartbeats are in

        code, output, took = refused(root, redis, "a", TTL)
        assert code == EXIT_CONFIG, output
        assert "cannot join the fleet: host_id 'a' is in use by another live daemon" in output
        assert took < TTL + 10  # it watched a's heartbeat for two periods, then said so
        assert hosts["a"].alive()

        code, output, _ = refused(root, redis, "b", TTL + 2)
        assert code == EXIT_CONFIG, output
        assert f"lease_ttl {TTL + 2:g} s differs from the live hosts' (a: {TTL:g} s)" in output

        # A daemon that died a moment ago left its heartbeat (it lives lease_ttl; here
        # 60 s): not renewed, so a new daemon under that host_id joins after watching it.
        trio.run(dead_heartbeat, redis, "c")
        started = time.monotonic()
        hosts["c"] = Host(root, redis, "c", capacity=2)
        assert time.monotonic() - started < 30
        assert "cluster_join_waiting" in hosts["c"].proc.output()


async def dead_heartbeat(redis: RedisServer, host: str) -> None:
    with trio.fail_after(10):
        async with open_store(make_config(redis_url=redis.url)) as store:
            beat = HostBeat(host=host, version="0", capacity=1, sessions=0, running=0, lease_ttl=TTL, pid=1,
                            instance="d" * 16)
            await store.heartbeat(beat, 60)


async def test_another_process_writing_this_host_ids_heartbeat_is_reported() -> None:
    """Two daemons started at the same instant both pass the join check; their
    heartbeats then overwrite each other's, which each notices (the script returns the
    instance it replaced): logged, counted, alerted."""
    with redis_server() as redis, trio.fail_after(30):
        async with fleet_in_process(redis, "a") as daemons, open_store(make_config(redis_url=redis.url)) as store:
            node = daemons["a"].node
            assert node is not None
            while node._beats < 2:
                await trio.sleep(0.05)
            assert node.metrics.host_id_conflicts._value.get() == 0
            twin = HostBeat(host="a", version="x", capacity=1, sessions=0, running=0, lease_ttl=2.0, pid=1,
                            instance="f" * 16)
            assert await store.heartbeat(twin, 2.0) == node.instance  # it replaced a's own
            while node.metrics.host_id_conflicts._value.get() == 0:
                await trio.sleep(0.05)


@pytest.mark.slow
def test_a_daemon_started_without_redis_checks_before_its_first_heartbeat() -> None:
    """Redis unreachable at start: the daemon starts unchecked; when Redis answers it
    runs the checks before any heartbeat or takeover, and refused it stays out: no
    heartbeat of its own over the live daemon's, `connect` answers unavailable."""
    with fleet() as (redis, root, hosts), fault_proxy(redis.sock) as proxy:
        hosts["a"] = Host(root, redis, "a", capacity=2)
        proxy.set_mode("cut")
        hosts["twin"] = twin = Host(root, redis, "a", capacity=2, url=proxy.url, directory="twin")
        assert "cluster_join_unchecked" in twin.proc.output()
        proxy.set_mode("pass")
        wait_for("the twin refuses to join", lambda: "cluster_join_refused" in twin.proc.output(), TTL * 3 + 10)
        with Client(twin.sock, timeout=10) as wa:
            with pytest.raises(Unavailable, match="this host may not join the fleet: host_id 'a' is in use"):
                wa.connect("s1")
        assert metric(twin, "wa_cluster_join_refused_total") == 1
        time.sleep(TTL / 5 * 3)  # the twin's upkeep rounds go by: it writes no heartbeat
        beat = trio.run(heartbeat_of, redis, "a")
        assert beat is not None and beat.pid == hosts["a"].proc.proc.pid
        assert metric(hosts["a"], "wa_cluster_host_id_conflicts_total") == 0


async def heartbeat_of(redis: RedisServer, host: str) -> HostBeat | None:
    with trio.fail_after(10):
        async with open_store(make_config(redis_url=redis.url)) as store:
            return await store.beat(host)
