"""Redis restarted under three daemon processes (scripted driver), with its data (AOF)
and without it (docs/cluster.md, "Tokens, and a Redis that lost its data").

A sampler reads every lease key, then every host's running sessions, round after
round: no session ever runs on two hosts, and none runs on a host while its lease
names another (read first: a host fences before anybody else can acquire). After a
restart with its data the sessions stay where they were; without it every holder
fences (its renewal finds no lease), nobody acquires for one lease_ttl, and then the
sessions come back: each former holder takes its own again (it remembers the rows
Redis lost), through an ordinary atomic acquisition.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from .test_cluster_failover import TTL, Host, Sampler, connect_all, fleet, metric, wait_for

pytestmark = pytest.mark.slow

PLACED = {"a": ["a0", "a1"], "b": ["b0", "b1"], "c": ["c0"]}
ALL = sorted(s for sessions in PLACED.values() for s in sessions)


class LeaseSampler(Sampler):
    """The Sampler's rounds, each preceded by a read of every lease key."""

    def __init__(self, hosts: dict[str, Host], sock: Path) -> None:
        super().__init__(hosts)
        self.sock = sock
        self.mismatches: list[tuple[str, str, str]] = []
        self.holders: dict[str, str | None] = {}

    def _leases(self) -> dict[str, str | None]:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(str(self.sock))
                s.sendall(b"".join(f"GET wa:lease:{x}\r\n".encode() for x in ALL))
                reader = s.makefile("rb")
                found: dict[str, str | None] = {}
                for session in ALL:
                    head = reader.readline()
                    if head.startswith(b"$-1"):
                        found[session] = None
                    else:
                        found[session] = reader.readline().decode().strip().partition(" ")[2]
                return found
        except OSError:
            return {}  # Redis is restarting

    def round(self) -> dict[str, list[str]]:
        leases = self._leases()
        seen = super().round()
        for session, where in seen.items():
            holder = leases.get(session)
            for host in where:
                if holder is not None and holder != host:
                    self.mismatches.append((session, host, holder))
        return seen


def test_redis_restarted_with_and_without_its_data_never_gives_two_owners() -> None:
    with fleet() as (redis, root, hosts):
        for host in PLACED:
            hosts[host] = Host(root, redis, host, capacity=4)
        for host, sessions in PLACED.items():
            connect_all(hosts[host], sessions)
        for host, sessions in PLACED.items():
            wait_for(f"{host} runs its sessions", lambda h=host, s=sessions: hosts[h].connected() == set(s), 30)

        with LeaseSampler(hosts, redis.sock) as sampler:
            redis.restart(keep_data=True)
            time.sleep(TTL * 2)
            for host, sessions in PLACED.items():
                assert hosts[host].connected() == set(sessions), host
            fenced = sum(metric(h, "wa_cluster_fenced_total", reason=r)
                         for h in hosts.values() for r in ("expiring", "lost"))
            assert fenced == 0

            restarted = time.monotonic()
            redis.restart(keep_data=False)
            wait_for("every holder fenced", lambda: all(not h.running() for h in hosts.values()), TTL * 2)
            took = wait_for(
                "every session back on its host",
                lambda: all(hosts[h].connected() == set(s) for h, s in PLACED.items()),
                TTL * 3 + 15,
            )
            back = time.monotonic() - restarted
            print(f"Redis restarted without its data: every session connected again {back:.2f} s later")
            assert back >= TTL * 0.9  # nobody acquired during the quarantine
            assert took > 0
            assert sampler.rounds > 50
        assert sampler.overlaps == [], sampler.overlaps
        assert sampler.mismatches == [], sampler.mismatches
        lost = sum(metric(h, "wa_cluster_fenced_total", reason="lost") for h in hosts.values())
        assert lost == len(ALL)
