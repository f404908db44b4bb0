"""Failover between real daemon processes on one real redis-server (docs/cluster.md).

Three scripted daemons. kill -9 of the host holding every session: the survivors
take the sessions through their launch queues, up to their capacity, and bring
them back. SIGSTOP of a host past its lease: taken over; SIGCONT: the old host
stops those sessions before it answers anything and writes nothing. A sampler
asks every live host for its sessions all along: no session is ever running on
two hosts in the same round.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from wa_daemon import Client, Unavailable, WaDaemonError
from wa_daemon.daemon.cluster.store import open_store
from wa_daemon.daemon.sessions.states import ACTIVE
from wa_daemon.protocol import State

from .helpers import DaemonProcess, make_config, short_tmpdir
from .redis_server import RedisServer, redis_server

pytestmark = pytest.mark.slow

TTL = 3.0
RUNNING = ACTIVE  # a browser on its way or up
SESSIONS = [f"s{i}" for i in range(6)]


class Host:
    def __init__(
        self,
        root: Path,
        redis: RedisServer,
        host: str,
        capacity: int,
        *extra: str,
        url: str | None = None,
        ttl: float = TTL,
        directory: str | None = None,
        auto_scan: bool = True,
    ) -> None:
        self._place(root, directory or host)
        self.id = host
        self.proc = DaemonProcess(
            self.sock, "--driver", "scripted",
            "--set", f"redis_url={url or redis.url}", "--set", f"host_id={host}", "--set", f"lease_ttl={ttl}",
            "--set", f"max_sessions={capacity}", "--set", "max_concurrent_launches=2",
            "--set", "scripted.launch_delay=0.2", "--set", "scripted.auth_delay=0.2",
            *(("--set", "scripted.auto_scan_after=0.2") if auto_scan else ()), *extra,
        )
        self.proc.wait_ready()

    def _place(self, root: Path, host: str) -> None:
        self.id = host
        self.dir = root / host
        self.dir.mkdir(exist_ok=True)
        self.sock = self.dir / "d.sock"
        self.frozen = False

    def alive(self) -> bool:
        return self.proc.proc.poll() is None and not self.frozen

    def running(self) -> dict[str, State]:
        """The sessions this host runs (its `list` also shows the others', with their `host`)."""
        with Client(self.sock, timeout=2) as wa:
            return {s.session: s.state for s in wa.list() if s.state in RUNNING and s.host == self.id}

    def connected(self) -> set[str]:
        return {s for s, state in self.running().items() if state == State.CONNECTED}

    def signal(self, signum: int) -> None:
        self.proc.proc.send_signal(signum)


class Sampler:
    """Every live host's running sessions, round after round, in a thread."""

    def __init__(self, hosts: dict[str, Host]) -> None:
        self.hosts = hosts
        self.rounds = 0
        self.overlaps: list[tuple[str, list[str], float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            seen = self.round()
            took = time.monotonic() - started
            for session, where in seen.items():
                if len(where) > 1:
                    self.overlaps.append((session, where, took))
            self.rounds += 1
            time.sleep(0.02)

    def round(self) -> dict[str, list[str]]:
        """One sampling round: session -> the hosts running it."""
        seen: dict[str, list[str]] = {}
        for host in list(self.hosts.values()):
            if not host.alive():
                continue
            try:
                running = host.running()
            except (WaDaemonError, OSError):
                continue  # killed or stopped between the check and the call
            for session in running:
                seen.setdefault(session, []).append(host.id)
        return seen

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@contextmanager
def fleet() -> Iterator[tuple[RedisServer, Path, dict[str, Host]]]:
    with redis_server() as redis, short_tmpdir() as root:
        hosts: dict[str, Host] = {}
        try:
            yield redis, root, hosts
        finally:
            for host in hosts.values():
                if host.frozen:
                    host.signal(signal.SIGCONT)
                host.proc.stop()
                print(f"---- host {host.id}\n{host.proc.output()[-6000:]}")  # shown when the test fails


def wait_for(what: str, check: object, timeout: float) -> float:
    """Poll ``check()`` until true; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def metric(host: Host, name: str, **labels: str) -> float:
    with Client(host.sock, timeout=5) as wa:
        return sum(s.value for s in wa.metrics().samples if s.name == name and s.labels == labels)


def connect_all(host: Host, sessions: Sequence[str] = SESSIONS) -> None:
    with Client(host.sock, timeout=10) as wa:
        for session in sessions:
            while True:
                try:
                    wa.connect(session)
                    break
                except Unavailable as exc:  # a fresh Redis grants no lease for one TTL
                    assert "Redis restarted" in str(exc), exc
                    time.sleep(exc.details["retry_after"])


def a_holds_every_session(root: Path, redis: RedisServer, hosts: dict[str, Host], *a_extra: str, ttl: float = TTL) -> None:
    """Hosts a (room for 6), b and c (4 each); a runs every session, connected.
    a starts alone: with b and c up, placement would spread the new sessions."""
    hosts["a"] = Host(root, redis, "a", 6, *a_extra, ttl=ttl)
    connect_all(hosts["a"])
    wait_for("a runs every session", lambda: hosts["a"].connected() == set(SESSIONS), 30)
    hosts["b"] = Host(root, redis, "b", 4, ttl=ttl)
    hosts["c"] = Host(root, redis, "c", 4, ttl=ttl)


def test_kill_and_pause_move_sessions_with_never_two_owners() -> None:
    with fleet() as (redis, root, hosts):
        a_holds_every_session(root, redis, hosts)

        with Sampler(hosts) as sampler:
            # kill -9 of the host that holds everything
            hosts["a"].proc.proc.kill()
            hosts["a"].proc.proc.wait(10)
            took = wait_for(
                "b and c run every session",
                lambda: hosts["b"].connected() | hosts["c"].connected() == set(SESSIONS),
                TTL + 15,
            )
            b, c = hosts["b"].running(), hosts["c"].running()
            assert len(b) <= 4 and len(c) <= 4 and len(b) + len(c) == 6, (b, c)
            assert b and c  # both survivors took a share: no stampede onto one
            print(f"failover after kill -9: all {len(SESSIONS)} sessions connected again {took:.2f} s later")
            assert took < TTL + 8  # lease_ttl plus the scripted restore time, with slack for a busy machine

            # a comes back empty-handed (its leases were taken); then b is paused past its leases
            del hosts["a"]
            hosts["a"] = Host(root, redis, "a", capacity=6)
            paused = set(hosts["b"].running())
            hosts["b"].frozen = True
            hosts["b"].signal(signal.SIGSTOP)
            wait_for(
                "a and c run b's sessions",
                lambda: paused <= hosts["a"].connected() | hosts["c"].connected(),
                TTL * 2 + 15,
            )
            # SIGCONT: b's first answer already lacks them; it fenced before answering
            hosts["b"].signal(signal.SIGCONT)
            hosts["b"].frozen = False
            assert hosts["b"].running() == {}
            time.sleep(1.0)  # anything b might still write would land now
            assert sampler.rounds > 50

        assert sampler.overlaps == [], sampler.overlaps
        fenced = sum(metric(hosts["b"], "wa_cluster_fenced_total", reason=r) for r in ("pause", "lost", "expiring"))
        assert fenced == len(paused)
        # b wrote nothing after its leases were gone: every row of its old sessions was
        # last written under the lease of the host that runs the session now
        owners = {s: h.id for h in hosts.values() for s in h.running()}
        assert set(owners) == set(SESSIONS)
        written = trio.run(rows_written_by, redis)
        assert {s: written[s] for s in paused} == {s: owners[s] for s in paused}


async def rows_written_by(redis: RedisServer) -> dict[str, str]:
    """The host under whose lease each session's row was last written."""
    with trio.fail_after(10):
        async with open_store(make_config(redis_url=redis.url)) as store:
            found = {}
            for session in await store.session_ids():
                value = await store.client.hget(store.session_key(session), "lease")
                assert value is not None
                found[session] = value.decode().partition(" ")[2]
            return found
