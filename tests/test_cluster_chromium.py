"""Failover with real Chromium on the simulator's module page (docs/cluster.md): three
daemon processes (each its own state_dir) on one real redis-server and one simulator.

A session linked on host a (the simulator's device scans its QR). kill -9 of a's daemon
and its Chromium: another host restores the auth snapshot into a fresh profile and the
session is ``connected`` again with no QR and one device, never in conflict. Then the new
owner's daemon alone is paused (SIGSTOP) past the lease: its watchdog
(cluster/watchdog.py) kills its still-running Chromium before the lease can expire, a
third host takes the session over; on SIGCONT the old owner has fenced and writes
nothing. All along a thread samples every process of the machine:
never two running browsers for the session.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

from wa_daemon import Client
from wa_daemon.protocol import State

from .helpers import DaemonProcess, needs_chromium
from .redis_server import RedisServer
from .test_cluster_auth import snapshots
from .test_cluster_failover import Host, Sampler, connect_all, fleet, metric, rows_written_by, wait_for

pytestmark = [needs_chromium, pytest.mark.slow]

TTL = 3.0
SID = "r"


class ChromiumHost(Host):
    def __init__(self, root: Path, redis: RedisServer, host: str, url: str) -> None:
        self._place(root, host)
        self.profile = (self.dir / "state" / "sessions" / SID / "profile").resolve()
        self.proc = DaemonProcess(
            self.sock, "--driver", "chromium", "--state-dir", str(self.dir / "state"), "--wa-url", url + "/",
            "--set", f"redis_url={redis.url}", "--set", f"host_id={host}", "--set", f"lease_ttl={TTL}",
            "--set", "max_sessions=2",
        )
        self.proc.wait_ready(30)

    def browsers(self) -> list[tuple[int, str]]:
        """(pid, process state) of the browsers on this host's profile: the leaders of
        their process groups (the daemon starts each in its own), not their helpers, nor
        a child forked a moment ago that still shows its parent's command line."""
        needle = f"--user-data-dir={self.profile}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()  # state, ppid, pgrp, ...
            if needle in argv and not any(a.startswith(b"--type=") for a in argv) and fields[2] == entry:
                found.append((int(entry), fields[0]))
        return found

    def signal_browsers(self, signum: int) -> None:
        for pid, _ in self.browsers():
            try:
                os.killpg(pid, signum)  # the browser leads its own process group
            except ProcessLookupError:
                pass


class BrowserSampler(Sampler):
    """Every host's browsers of the session, and the simulator's pages, round after round
    (in a thread, as the daemons' own Sampler)."""

    def __init__(self, hosts: dict[str, Host], sim: str) -> None:
        super().__init__(hosts)
        self.sim = sim
        self.browser_overlaps: list[dict[str, list[tuple[int, str]]]] = []
        self.conflicts: list[dict[str, Any]] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            seen = {h.id: h.browsers() for h in list(self.hosts.values())}  # type: ignore[attr-defined]
            # A zombie (Z) is dead; a stopped (T) browser would not run (none is stopped here).
            running = {h: [b for b in found if b[1] not in "TZ"] for h, found in seen.items()}
            if sum(len(found) for found in running.values()) > 1:
                self.browser_overlaps.append(seen)
            for page in sim_get(self.sim, "/__sim__/pages"):
                if page["open"] and page["screen"] == "conflict" and not self._paused_page(page):
                    self.conflicts.append(page)
            self.rounds += 1
            time.sleep(0.02)

    paused_pages: set[str] = set()

    def _paused_page(self, page: dict[str, Any]) -> bool:
        # The stopped owner's page, if the simulator has not yet seen its browser die
        # when the new owner's page takes the device: nobody runs to see it.
        return page["id"] in self.paused_pages


def sim_get(url: str, path: str) -> Any:
    with urllib.request.urlopen(url + path, timeout=5) as r:
        return json.loads(r.read())


def sim_post(url: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.loads(r.read())


def owner_of(hosts: dict[str, ChromiumHost]) -> ChromiumHost | None:
    found = [h for h in hosts.values() if h.alive() and SID in h.connected()]
    return found[0] if len(found) == 1 else None


def history(host: Host) -> list[tuple[State, str | None]]:
    with Client(host.sock, timeout=5) as wa:
        return [(t.to_state, t.reason) for t in wa.history(SID)]


def linked_without_qr_or_conflict(host: Host) -> None:
    seen = history(host)
    assert seen[-1][0] == State.CONNECTED, seen
    assert not [s for s, reason in seen if s == State.WAITING_QR or reason == "conflict"], seen


def restore_seconds(host: Host) -> float:
    for line in reversed(host.proc.output().splitlines()):
        if '"cluster_auth_snapshot_restored"' in line and f'"session":"{SID}"' in line:
            return float(json.loads(line)["seconds"])
    raise AssertionError(f"no cluster_auth_snapshot_restored on {host.id}")


def test_real_chromium_failover_without_a_qr_and_never_two_browsers() -> None:
    sim = subprocess.Popen(
        [sys.executable, "-m", "wa_daemon.sim.main", "--port", "0", "--quiet", "--time-scale", "0.05"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert sim.stdout is not None
        url = sim.stdout.readline().strip()
        with fleet() as (redis, root, plain):
            hosts: dict[str, ChromiumHost] = plain  # type: ignore[assignment]
            for name in "abc":
                hosts[name] = ChromiumHost(root, redis, name, url)
            a = hosts["a"]
            connect_all(a, [SID])
            with Client(a.sock, timeout=10) as wa:
                wait_for("a QR", lambda: wa.status(SID).state == State.WAITING_QR, 60)
                sim_post(url, "/__sim__/scan", {"ref": wa.qr(SID).data})  # the phone scans it
            wait_for("connected on a", lambda: SID in a.connected(), 60)
            wait_for("its snapshot in Redis", lambda: SID in snapshots(redis), 20)
            size = snapshots(redis)[SID]
            devices = sim_get(url, "/__sim__/devices")
            assert len(devices) == 1

            with BrowserSampler(hosts, url) as sampler:  # type: ignore[arg-type]
                assert isinstance(sampler, BrowserSampler)
                # kill -9 of the owner's daemon and its Chromium
                assert a.browsers()
                killed = time.monotonic()
                a.proc.proc.kill()
                a.signal_browsers(signal.SIGKILL)
                a.proc.proc.wait(10)
                wait_for("a's browser gone", lambda: not a.browsers(), 10)
                wait_for("connected on b or c", lambda: owner_of(hosts) is not None, TTL + 60)
                failover = time.monotonic() - killed
                new = owner_of(hosts)
                assert new is not None and new is not a
                linked_without_qr_or_conflict(new)
                assert [d["id"] for d in sim_get(url, "/__sim__/devices")] == [devices[0]["id"]]  # no new link
                restored = restore_seconds(new)
                print(
                    f"real Chromium failover after kill -9: connected on {new.id} {failover:.2f} s later "
                    f"(lease_ttl {TTL:g} s); snapshot {size} bytes, restored in {restored * 1000:.1f} ms"
                )

                # the new owner's daemon and its browser paused past the lease
                old = new
                sampler.paused_pages.update(
                    p["id"] for p in sim_get(url, "/__sim__/pages") if p["open"] and p["device"] == devices[0]["id"]
                )
                # SIGSTOP of the daemon alone: its Chromium keeps running until the
                # watchdog ends it, before the lease can expire
                old.frozen = True
                old.signal(signal.SIGSTOP)
                paused = time.monotonic()
                wait_for("the watchdog killed the stopped daemon's browser", lambda: not old.browsers(), TTL + 10)
                browser_gone = time.monotonic() - paused
                wait_for(
                    "taken over by the third host",
                    lambda: any(SID in h.connected() for h in hosts.values() if h.alive()),
                    TTL * 2 + 60,
                )
                third = owner_of(hosts)
                assert third is not None and third is not old and third is not a
                took_over = time.monotonic() - paused
                assert "cluster_watchdog_killed_browsers" in old.proc.output()
                # SIGCONT: its first answer lacks the session (fenced), and it writes nothing
                old.signal(signal.SIGCONT)
                old.frozen = False
                assert SID not in old.running()
                time.sleep(1.5)  # anything the old owner might still write would land now
                assert owner_of(hosts) is third
                linked_without_qr_or_conflict(third)
                print(
                    f"daemon SIGSTOPped: its browser killed by the watchdog {browser_gone:.2f} s later, "
                    f"the session connected on {third.id} {took_over:.2f} s after SIGSTOP"
                )
                assert sampler.rounds > 20

            assert sampler.browser_overlaps == [], sampler.browser_overlaps[:3]
            assert sampler.conflicts == [], sampler.conflicts[:3]
            assert metric(old, "wa_cluster_fenced_total", reason="pause") == 1
            # the old owner wrote nothing after its lease was gone: the row and the snapshot
            # were last written under the third host's lease
            assert trio.run(rows_written_by, redis)[SID] == third.id
            assert lease_of_snapshot(redis) == third.id
    finally:
        sim.terminate()
        sim.wait(10)


def lease_of_snapshot(redis: RedisServer) -> str:
    from wa_daemon.daemon.cluster.store import open_store

    from .helpers import make_config

    async def read() -> str:
        with trio.fail_after(10):
            async with open_store(make_config(redis_url=redis.url)) as store:
                value = await store.client.hget(f"wa:auth:{SID}", "lease")
                assert value is not None
                return value.decode().partition(" ")[2]

    return trio.run(read)
