"""Cluster benchmark: three daemons on one real redis-server (docs/cluster.md).

One run starts its own ``redis-server`` (a subprocess on a Unix socket in a temp dir,
AOF as the tests run it) and three ``wa-daemon`` processes (scripted driver, ``host_id``
h1, h2, h3, ``lease_ttl`` as given, capacity for every session of the fleet, the default
launch queue of 2), connects ``--sessions`` sessions on each host, waits until all are
``connected``, then measures, side by side with a baseline taken in the same run:

* **status from a non-owner vs the owner**: ``status`` of one session, alternately on its
  owner and on another host (a connection kept open to each), p50/p99 and their ratio.
  The non-owner must answer with ``host`` = the owner; when it does not (a daemon
  without any-host reads answers ``not_found``) the line says "not measured" and why.
* **watch event latency across hosts vs the same host**: a ``watch`` of every session on
  the owner and one on another host; sessions of the owner are disconnected and
  reconnected one after the other, and each transition's arrival is timed from the call
  on both streams. "not measured" when the other host's watch never sees them.
* **Redis load when idle**: over an idle window, ``INFO commandstats``,
  ``total_commands_processed`` and Redis's CPU (``used_cpu_user+sys``); over a second
  window of the same length, ``MONITOR`` (through ``redis-cli``) splits the commands the
  hosts send by script: lease renewals (``RENEW``), heartbeats (``HEARTBEAT``), orphan
  scans (``ORPHANS``), status writes (``FENCED_WRITE``) and the rest. Per session per
  minute, then projected linearly to 10,000 sessions (same sessions per host, so per-host
  costs scale with the hosts), next to what ``redis-benchmark`` measures on the same
  server in the same run: ``SET``/``GET`` (``-q``), and the real ``RENEW`` script
  renewing a batch of as many leases as one host holds. Ratios: projected commands/s over
  ``SET`` ops/s, projected lease renewals/s over renewals/s the script sustains,
  projected Redis CPU over one core.
* **failover after kill -9**: ``--rounds`` times, the host holding most sessions gets
  SIGKILL; every one of its sessions is timed from that instant to ``connected`` on a
  survivor (``list`` of each survivor polled every 20 ms); p50/max per round. The killed
  host then comes back empty-handed for the next round.
* **lease churn**: a fresh fleet (new Redis, three hosts) where one host holds
  ``--churn`` sessions (100); it is killed and the two survivors take them all. The time
  from the first takeover to the last session ``connected``, next to the bound the
  launch queues set: ceil(n / (2 survivors x max_concurrent_launches)) x one launch's
  time to ``connected`` (measured on this run's first connects), and next to the pace of
  the orphan scans (each host takes at most that many per renewal period).
* ``--chromium K``: a fresh fleet on the Chromium driver and the simulator
  (``wa-daemon-sim``); h1 links K sessions (the benchmark plays the phone: it scans every
  QR shown); ``kill -9`` of h1's daemon and of its browsers' process groups (the host
  dies); time to ``connected`` on a survivor, and the QRs scanned on the way (none once
  auth snapshots move with the session).

    python bench/cluster.py --chromium 3         # and 3 real Chromium sessions
    python bench/cluster.py                      # 3 x 50 sessions, lease_ttl 15 s, 3 rounds
    python bench/cluster.py --quick              # 3 x 10 sessions, lease_ttl 3 s, 1 round
    python bench/cluster.py --sessions 100 --rounds 5 --idle 120

A benchmark reports; it does not assert: the exit status is 0 whatever the figures (1 if
it could not run, 130 if interrupted). It prints a table, then one line ``RESULT {json}``.
Every process it starts is killed at the end and the temporary directory removed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import queue
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import DaemonProcess, short_tmpdir
from tests.redis_server import RedisServer
from wa_daemon import Client, NotFound, RateLimited, Unavailable, WaDaemonError
from wa_daemon.daemon.cluster import scripts
from wa_daemon.protocol import State, StateChanged

HOSTS = ("h1", "h2", "h3")
PROJECT_TO = 10_000
SCRIPTED = {"scripted.launch_delay": "0.2", "scripted.auth_delay": "0.2", "scripted.auto_scan_after": "0.2"}
SCRIPT_NAMES = {
    hashlib.sha1(getattr(scripts, name).encode()).hexdigest(): name
    for name in ("ACQUIRE", "RENEW", "FENCED_WRITE", "FENCED_DELETE", "RELEASE", "ORPHANS", "NEXT_EXPIRY", "HEARTBEAT",
                 "NOW")
}
# What each script is for, in the table (the brief's split: leases, heartbeats, scans).
SCRIPT_ROLE = {"RENEW": "lease renewals", "HEARTBEAT": "heartbeats", "ORPHANS": "orphan scans",
               "NEXT_EXPIRY": "expiry look-ahead",
               "FENCED_WRITE": "status/row writes", "ACQUIRE": "lease acquisitions"}


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Plan:
    sessions: int = 50  # per host
    rounds: int = 3
    lease_ttl: float = 15.0
    idle_s: float = 60.0
    status_calls: int = 300
    watch_cycles: int = 10
    churn: int = 100
    launches: int = 2  # max_concurrent_launches
    chromium: int = 0  # real Chromium sessions on the simulator, in a failover of their own
    bench_requests: int = 100_000  # redis-benchmark -n (SET, GET; lease renewals for RENEW)


FULL = Plan()
QUICK = Plan(sessions=10, rounds=1, lease_ttl=3.0, idle_s=10.0, status_calls=100, watch_cycles=4, churn=20,
             bench_requests=20_000)


# ============================================================================ the fleet


class Host:
    def __init__(self, root: Path, redis: RedisServer, host: str, plan: Plan, capacity: int,
                 web: str | None = None) -> None:
        """``web``: the simulator's URL, for the Chromium driver (scripted without)."""
        self.id = host
        self.dir = root / host
        self.dir.mkdir(exist_ok=True)
        self.sock = self.dir / "d.sock"
        settings = {"redis_url": redis.url, "host_id": host, "lease_ttl": f"{plan.lease_ttl:g}",
                    "max_sessions": str(capacity), "max_concurrent_launches": str(plan.launches),
                    **(SCRIPTED if web is None else {})}
        args = [x for k, v in settings.items() for x in ("--set", f"{k}={v}")]
        driver = ["--driver", "scripted"] if web is None else [
            "--driver", "chromium", "--wa-url", web + "/", "--state-dir", str(self.dir / "state")]
        self.proc = DaemonProcess(self.sock, *driver, "--log-level", "warning", *args)
        self.proc.wait_ready(30)

    def alive(self) -> bool:
        return self.proc.proc.poll() is None

    def states(self) -> dict[str, State]:
        """The sessions this host runs (its `list` shows the fleet's, each with its `host`)."""
        with Client(self.sock, timeout=10) as wa:
            return {s.session: s.state for s in wa.list() if s.host in (None, self.id)}

    def kill(self) -> float:
        """SIGKILL; returns the instant it was sent."""
        at = time.monotonic()
        self.proc.proc.send_signal(signal.SIGKILL)
        self.proc.proc.wait(10)
        self.proc.log.close()
        return at


class Fleet:
    def __init__(self, root: Path, plan: Plan, capacity: int, web: str | None = None,
                 hosts: tuple[str, ...] = HOSTS) -> None:
        """``hosts``: the ones started now (the others with :meth:`start`)."""
        self.root = root
        self.plan = plan
        self.capacity = capacity
        self.web = web
        self.scans = 0  # QRs the phone scanned (Chromium sessions)
        (root / "redis").mkdir(parents=True)
        self.redis = RedisServer(root / "redis")
        self.redis.start()
        self.hosts: dict[str, Host] = {}
        try:
            for h in hosts:
                self.start(h)
        except BaseException:
            self.close()
            raise

    def start(self, host: str) -> Host:
        self.hosts[host] = Host(self.root, self.redis, host, self.plan, self.capacity, self.web)
        return self.hosts[host]

    def redis_cli(self, *args: str, timeout: float = 30) -> str:
        return subprocess.run(["redis-cli", "-s", str(self.redis.sock), *args], capture_output=True, text=True,
                              timeout=timeout, check=True).stdout

    def info(self, section: str) -> dict[str, str]:
        out = {}
        for line in self.redis_cli("INFO", section).splitlines():
            key, sep, value = line.strip().partition(":")
            if sep:
                out[key] = value
        return out

    def close(self) -> None:
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                host.proc.stop(5)
        self.redis.stop()


def connect_one(wa: Client, session: str) -> None:
    while True:
        try:
            wa.connect(session)
            return
        except (Unavailable, RateLimited) as exc:  # a fresh Redis's quarantine; connect_min_interval
            if "retry_after" not in exc.details:
                raise
            time.sleep(float(exc.details["retry_after"]))


def connect_on(host: Host, sessions: list[str]) -> None:
    with Client(host.sock, timeout=30) as wa:
        for s in sessions:
            connect_one(wa, s)


def wait_connected(fleet: Fleet, sessions: set[str], timeout: float) -> dict[str, float]:
    """Poll every live host's list until each of ``sessions`` is connected somewhere;
    returns the monotonic instant each was first seen connected."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(sessions):
        if time.monotonic() > deadline:
            missing = sorted(sessions - set(seen))
            raise RuntimeError(f"{len(missing)} sessions not connected within {timeout:.0f} s: {missing[:5]}")
        for host in list(fleet.hosts.values()):
            if not host.alive():
                continue
            try:
                states = host.states()
            except WaDaemonError:
                continue
            now = time.monotonic()
            for s, state in states.items():
                if state == State.CONNECTED and s in sessions and s not in seen:
                    seen[s] = now
        time.sleep(0.02)
    return seen


# ============================================================================ measurements


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return math.nan
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


@dataclass
class Results:
    load: list[float] = field(default_factory=list)
    launch_s: list[float] = field(default_factory=list)  # connect -> connected, quiet fleet, one at a time
    status_owner: list[float] = field(default_factory=list)
    status_other: list[float] = field(default_factory=list)
    status_missing: str | None = None
    watch_same: list[float] = field(default_factory=list)
    watch_cross: list[float] = field(default_factory=list)
    watch_missing: str | None = None
    idle: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, float] = field(default_factory=dict)
    failover: list[dict[str, Any]] = field(default_factory=list)
    churn: dict[str, Any] = field(default_factory=dict)
    chromium: dict[str, Any] = field(default_factory=dict)


def _state(wa: Client, session: str) -> State | None:
    """None until this host has heard of it (placed on another host, its events not here yet)."""
    try:
        return wa.status(session).state
    except NotFound:
        return None


def measure_launch(fleet: Fleet, res: Results, count: int = 3) -> None:
    """One session at a time on a quiet host: connect -> connected (the launch queue's unit)."""
    host = fleet.hosts["h1"]
    with Client(host.sock, timeout=30) as wa:
        connect_one(wa, "probe0")  # waits out a fresh Redis's quarantine; not timed
        for i in range(1, count + 1):
            s = f"probe{i}"
            t0 = time.monotonic()
            wa.connect(s)
            while _state(wa, s) != State.CONNECTED:
                if time.monotonic() - t0 > 30:
                    raise RuntimeError(f"{s} not connected in 30 s")
                time.sleep(0.005)
            res.launch_s.append(time.monotonic() - t0)


def measure_status(fleet: Fleet, res: Results, session: str, owner: str, other: str) -> None:
    with Client(fleet.hosts[owner].sock, timeout=10) as a, Client(fleet.hosts[other].sock, timeout=10) as b:
        try:
            got = b.status(session)
        except WaDaemonError as exc:
            res.status_missing = (f"{other} answers {exc.code} for {owner}'s session (any-host reads are "
                                  "not in this build)")
            return
        if got.host != owner:
            res.status_missing = f"{other} answers host={got.host!r}, not the owner {owner!r}"
            return
        for i in range(2 * fleet.plan.status_calls):
            client, out = (a, res.status_owner) if i % 2 == 0 else (b, res.status_other)
            t0 = time.perf_counter()
            client.status(session)
            out.append(time.perf_counter() - t0)


class Stream:
    """A watch of every session on one host, read in a thread: (arrival, session, to_state)."""

    def __init__(self, host: Host) -> None:
        self.events: queue.Queue[tuple[float, str, State]] = queue.Queue()
        self.client = Client(host.sock, timeout=10)
        self.watch = self.client.watch(None, timeout=3600)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(WaDaemonError, OSError):
            for ev in self.watch:
                if isinstance(ev, StateChanged):
                    self.events.put((time.monotonic(), ev.status.session, ev.transition.to_state))

    def next_of(self, session: str, after: float, deadline: float) -> tuple[float, State] | None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                at, s, state = self.events.get(timeout=left)
            except queue.Empty:
                return None
            if s == session and at >= after:
                return at, state

    def close(self) -> None:
        self.watch.close()
        self.client.close()


def measure_watch(fleet: Fleet, res: Results, sessions: list[str], owner: str, other: str) -> None:
    same, cross = Stream(fleet.hosts[owner]), Stream(fleet.hosts[other])
    try:
        time.sleep(0.5)  # the snapshots go by
        with Client(fleet.hosts[owner].sock, timeout=10) as wa:
            for s in sessions[: fleet.plan.watch_cycles]:
                t0 = time.monotonic()
                wa.disconnect(s)
                here = same.next_of(s, t0, t0 + 5)
                there = cross.next_of(s, t0, t0 + (5 if res.watch_missing is None else 0.5))
                if here is not None:
                    res.watch_same.append(here[0] - t0)
                if there is not None:
                    res.watch_cross.append(there[0] - t0)
                elif res.watch_missing is None:
                    res.watch_missing = (f"a watch on {other} saw no event of {owner}'s session in 5 s "
                                         "(cross-host watch fan-out is not in this build)")
                connect_one(wa, s)
            wait_connected(fleet, set(sessions), 60)
    finally:
        same.close()
        cross.close()
    if res.watch_missing is None and not res.watch_cross:
        res.watch_missing = "no event seen"


_MONITOR = re.compile(r'^\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"(?: "([^"]*)")?')


def monitor(fleet: Fleet, seconds: float) -> dict[str, int]:
    """The commands the hosts send for ``seconds``, by script (EVALSHA/EVAL) or command."""
    proc = subprocess.Popen(["redis-cli", "-s", str(fleet.redis.sock), "MONITOR"], stdout=subprocess.PIPE,
                            text=True)
    counts: dict[str, int] = {}
    stop = time.monotonic() + seconds

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = _MONITOR.match(line)
            if m is None or m.group(1) == "lua" or time.monotonic() > stop:
                continue  # commands run inside a script are the script's
            cmd = m.group(2).upper()
            if cmd in ("EVALSHA", "EVAL"):
                arg = m.group(3) or ""
                key = SCRIPT_NAMES.get(arg if cmd == "EVALSHA" else hashlib.sha1(arg.encode()).hexdigest(), "other")
            else:
                key = cmd
            counts[key] = counts.get(key, 0) + 1

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(seconds)
    proc.terminate()
    proc.wait(10)
    reader.join(5)
    return counts


def commandstats(fleet: Fleet) -> dict[str, tuple[int, float]]:
    """command -> (calls, usec), every command Redis ran, inside scripts too."""
    out = {}
    for key, value in fleet.info("commandstats").items():
        fields = dict(kv.split("=", 1) for kv in value.split(","))
        out[key.removeprefix("cmdstat_")] = (int(fields["calls"]), float(fields["usec"]))
    return out


def measure_idle(fleet: Fleet, res: Results, sessions: int) -> None:
    plan = fleet.plan
    time.sleep(plan.lease_ttl / 5 + 1)  # the last status writes of the connects are out
    s0, cpu0 = commandstats(fleet), fleet.info("cpu")
    t0 = time.monotonic()
    time.sleep(plan.idle_s)
    wall = time.monotonic() - t0
    s1, cpu1 = commandstats(fleet), fleet.info("cpu")
    ours = ("info",)  # the benchmark's own INFO calls
    calls = {k: v[0] - s0.get(k, (0, 0.0))[0] for k, v in s1.items() if k not in ours}
    usec = {k: v[1] - s0.get(k, (0, 0.0))[1] for k, v in s1.items() if k not in ours}
    cpu = sum(float(cpu1[k]) - float(cpu0[k]) for k in ("used_cpu_user", "used_cpu_sys"))
    per_min = 60 / wall / sessions
    by_script = monitor(fleet, plan.idle_s)
    sent_per_min = 60 / plan.idle_s / sessions
    # Scripts' time includes the commands they run; the top-level commands' time is the whole.
    top_usec = sum(u for k, u in usec.items() if k in ("evalsha", "eval") or k.upper() in by_script)
    res.idle = {
        "sessions": sessions, "hosts": len(HOSTS), "window_s": wall,
        "sent_per_session_min": sum(by_script.values()) * sent_per_min,
        "sent_per_host_min": sum(by_script.values()) * 60 / plan.idle_s / len(HOSTS),
        "by_script_per_session_min": {k: v * sent_per_min for k, v in sorted(by_script.items())},
        "redis_commands_per_session_min": sum(v for v in calls.values() if v > 0) * per_min,
        "by_command_per_session_min": {k: v * per_min for k, v in sorted(calls.items()) if v > 0},
        "command_usec_per_session_min": top_usec * per_min,
        "cpu_core_fraction": cpu / wall,
    }


def redis_benchmark(fleet: Fleet, res: Results, batch: int) -> None:
    """SET/GET and the real RENEW script on a batch of ``batch`` leases, on the fleet's server."""
    sock = str(fleet.redis.sock)
    n = str(fleet.plan.bench_requests)
    out = subprocess.run(["redis-benchmark", "-s", sock, "-q", "-n", n, "-t", "set,get"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    for line in out.replace("\r", "\n").splitlines():
        m = re.match(r"^(SET|GET): ([\d.]+) requests per second", line.strip())
        if m:
            res.bench[m.group(1).lower()] = float(m.group(2))
    sha = fleet.redis_cli("SCRIPT", "LOAD", scripts.RENEW).strip()
    keys = [f"wa:bench:lease:{i}" for i in range(batch)]
    for k in keys:
        fleet.redis_cli("SET", k, "1 bench")
    cmd = ["EVALSHA", sha, str(2 + batch), "wa:bench:epoch", "wa:bench:expiry", *keys,
           str(int(fleet.plan.lease_ttl * 1000)), *(x for i in range(batch) for x in (f"b{i}", "1 bench"))]
    calls = max(2000, fleet.plan.bench_requests // batch)
    out = subprocess.run(["redis-benchmark", "-s", sock, "-q", "-n", str(calls), *cmd], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    m = re.search(r": ([\d.]+) requests per second", out.replace("\r", "\n"))
    if m:
        res.bench["renew_calls"] = float(m.group(1))
        res.bench["renew_leases"] = float(m.group(1)) * batch
    res.bench["renew_batch"] = batch
    fleet.redis_cli("DEL", "wa:bench:epoch", "wa:bench:expiry", *keys)


def failover_round(fleet: Fleet, res: Results, all_sessions: set[str]) -> None:
    held = {h: {s for s, st in host.states().items() if st == State.CONNECTED} for h, host in fleet.hosts.items()}
    victim = max(held, key=lambda h: len(held[h]))
    moved = held[victim]
    survivors = [h for h in fleet.hosts if h != victim]
    bound = fleet.plan.lease_ttl + math.ceil(len(moved) / (len(survivors) * fleet.plan.launches)) * (
        fleet.plan.lease_ttl / 5 + 3) + 30
    progress(f"failover: kill -9 of {victim} ({len(moved)} sessions)")
    at = fleet.hosts[victim].kill()
    del fleet.hosts[victim]
    seen = wait_connected(fleet, moved, bound)
    took = sorted(t - at for t in seen.values())
    res.failover.append({"victim": victim, "sessions": len(moved), "p50": pct(took, 0.5), "max": took[-1],
                         "min": took[0], "span": took[-1] - took[0]})
    fleet.start(victim)  # back, empty-handed, for the next round
    wait_connected(fleet, all_sessions, 60)


def measure_churn(root: Path, plan: Plan, res: Results) -> None:
    """A fresh fleet; h1 holds ``plan.churn`` sessions; kill -9; h2 and h3 take them."""
    n = plan.churn
    fleet = Fleet(root, plan, capacity=n, hosts=("h1",))  # alone: placement would spread them
    try:
        sessions = [f"c{i}" for i in range(n)]
        connect_on(fleet.hosts["h1"], sessions)
        wait_connected(fleet, set(sessions), 30 + n)
        fleet.start("h2")
        fleet.start("h3")
        progress(f"churn: kill -9 of h1 ({n} sessions)")
        at = fleet.hosts["h1"].kill()
        del fleet.hosts["h1"]
        seen = wait_connected(fleet, set(sessions), plan.lease_ttl + n * (plan.lease_ttl / 5 + 3))
        took = sorted(t - at for t in seen.values())
        per_host = {h: sum(1 for st in host.states().values() if st == State.CONNECTED)
                    for h, host in fleet.hosts.items()}
        unit = statistics.median(res.launch_s) if res.launch_s else math.nan
        batches = math.ceil(n / (2 * plan.launches))  # two survivors, a launch queue each
        res.churn = {"sessions": n, "first": took[0], "last": took[-1], "span": took[-1] - took[0], "unit": unit,
                     "batches": batches, "queue_bound": plan.lease_ttl + batches * unit, "per_host": per_host,
                     "renew_every": plan.lease_ttl / 5, "scan_bound": plan.lease_ttl + batches * plan.lease_ttl / 5}
    finally:
        fleet.close()


def browsers_under(root: Path) -> set[int]:
    """Process groups of the Chromium processes whose profile lies under ``root``."""
    groups = set()
    needle = f"--user-data-dir={root}/".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle not in f.read():
                    continue
            groups.add(os.getpgid(int(entry)))
        except (OSError, ProcessLookupError):
            continue
    return groups


def kill_groups(groups: set[int]) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def start_simulator(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([sys.executable, "-m", "wa_daemon.sim.main", "--port", "0", "--quiet"],
                            stdout=subprocess.PIPE, stderr=open(root / "sim.log", "wb"))
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("http"):
        proc.kill()
        raise RuntimeError(f"the simulator did not start: {(root / 'sim.log').read_text(errors='replace')[-800:]}")
    return proc, line


def link(fleet: Fleet, sessions: set[str], timeout: float) -> dict[str, float]:
    """Until each session is connected on a live host, the phone scanning every QR shown;
    returns when each was first seen connected, and counts the QRs scanned."""
    seen: dict[str, float] = {}
    scanned: set[tuple[str, str]] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < len(sessions):
        if time.monotonic() > deadline:
            raise RuntimeError(f"Chromium sessions not connected in {timeout:.0f} s: {sorted(sessions - set(seen))}")
        for host in list(fleet.hosts.values()):
            with contextlib.suppress(WaDaemonError), Client(host.sock, timeout=10) as wa:
                for st in wa.list():
                    if st.session not in sessions or st.session in seen or st.host not in (None, host.id):
                        continue  # another host's session, as this host last heard of it
                    if st.state == State.CONNECTED:
                        seen[st.session] = time.monotonic()
                    elif st.qr is not None and (st.session, st.qr.data) not in scanned:
                        scanned.add((st.session, st.qr.data))
                        req = urllib.request.Request(f"{fleet.web}/__sim__/scan", data=st.qr.data.encode(),
                                                     method="POST")
                        with contextlib.suppress(OSError), urllib.request.urlopen(req, timeout=10) as resp:
                            resp.read()
        time.sleep(0.05)
    fleet.scans += len(scanned)
    return seen


def measure_chromium(root: Path, plan: Plan, res: Results, k: int) -> None:
    """Real Chromium on the simulator: h1 holds ``k`` linked sessions; kill -9 of h1's daemon
    and of its browsers (the host dies); a survivor brings each back, scanning a QR if one is
    shown (none once auth snapshots move with the session)."""
    root.mkdir()
    sim, url = start_simulator(root)
    fleet: Fleet | None = None
    try:
        fleet = Fleet(root, plan, capacity=k, web=url, hosts=("h1",))  # alone: it holds them all
        sessions = {f"web{i}" for i in range(k)}
        connect_on(fleet.hosts["h1"], sorted(sessions))
        link(fleet, sessions, 60 + 20 * k)
        fleet.start("h2")
        fleet.start("h3")
        before = fleet.scans
        victim = fleet.hosts.pop("h1")
        progress(f"Chromium: kill -9 of h1 and its browsers ({k} sessions)")
        at = victim.kill()
        kill_groups(browsers_under(victim.dir))
        seen = link(fleet, sessions, plan.lease_ttl + 60 + 20 * k)
        took = sorted(t - at for t in seen.values())
        res.chromium = {"sessions": k, "p50": pct(took, 0.5), "max": took[-1], "qr_scanned": fleet.scans - before}
    finally:
        if fleet is not None:
            fleet.close()
        kill_groups(browsers_under(root))
        sim.kill()
        sim.wait(10)


def run(plan: Plan) -> Results:
    res = Results(load=[os.getloadavg()[0]])
    with short_tmpdir() as tmp:
        total = 3 * plan.sessions
        fleet = Fleet(tmp / "main", plan, capacity=total + 4)
        try:
            measure_launch(fleet, res)
            names = {h: [f"{h}-s{i}" for i in range(plan.sessions)] for h in HOSTS}
            progress(f"connecting {total} sessions on {len(HOSTS)} hosts")
            for h in HOSTS:
                connect_on(fleet.hosts[h], names[h])
            everything = {s for ss in names.values() for s in ss} | {f"probe{i}" for i in range(len(res.launch_s) + 1)}
            wait_connected(fleet, everything, 60 + total)
            # placement puts a new session on the least-loaded host, not where it was asked
            held = {h: sorted(s for s in fleet.hosts[h].states() if not s.startswith("probe")) for h in HOSTS}
            owner = max(held, key=lambda h: len(held[h]))
            other = next(h for h in HOSTS if h != owner)
            progress("status: owner vs non-owner")
            measure_status(fleet, res, held[owner][0], owner, other)
            progress("watch: same host vs across hosts")
            measure_watch(fleet, res, held[owner][1:], owner, other)
            progress(f"idle: 2 x {plan.idle_s:g} s")
            measure_idle(fleet, res, len(everything))
            progress("redis-benchmark")
            redis_benchmark(fleet, res, batch=len(everything) // len(HOSTS))
            for _ in range(plan.rounds):
                failover_round(fleet, res, everything)
        finally:
            fleet.close()
        if plan.churn:
            measure_churn(tmp / "churn", plan, res)
        if plan.chromium:
            measure_chromium(tmp / "web", plan, res, plan.chromium)
    res.load.append(os.getloadavg()[0])
    return res


# ============================================================================ report


def ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 1000:.2f}"


def projection(res: Results, plan: Plan) -> dict[str, float]:
    idle, b = res.idle, res.bench
    scale = PROJECT_TO / 60  # per session per minute -> per second at 10,000 sessions
    out = {
        "hosts": PROJECT_TO / (idle["sessions"] / idle["hosts"]),
        "sent_ops_s": idle["sent_per_session_min"] * scale,
        "redis_ops_s": idle["redis_commands_per_session_min"] * scale,
        "command_cpu_cores": idle["command_usec_per_session_min"] * scale / 1e6,
        "lease_renewals_s": PROJECT_TO / (plan.lease_ttl / 5),
    }
    out["ratio_sent_set"] = out["sent_ops_s"] / b["set"] if b.get("set") else math.nan
    out["ratio_redis_ops_set"] = out["redis_ops_s"] / b["set"] if b.get("set") else math.nan
    out["ratio_renewals"] = out["lease_renewals_s"] / b["renew_leases"] if b.get("renew_leases") else math.nan
    return out


def report(res: Results, plan: Plan, elapsed: float) -> tuple[str, dict[str, Any]]:
    lines: list[str] = []
    out = lines.append
    total = res.idle.get("sessions", 3 * plan.sessions)
    out("")
    out(f"wa-daemon cluster benchmark: 3 hosts x {plan.sessions} scripted sessions (+4 probes on h1), lease_ttl "
        f"{plan.lease_ttl:g} s, max_concurrent_launches {plan.launches}, {plan.rounds} failover round(s); "
        f"redis-server {_redis_version()}; source {_revision()}")
    out(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}; load average {res.load[0]:.1f} "
        f"at start, {res.load[-1]:.1f} at end; run took {elapsed:.0f} s")
    out(f"one launch, connect -> connected, quiet host: {' '.join(f'{x:.2f}' for x in res.launch_s)} s")
    out("")
    out(f"{'':44}{'owner':>10}{'other host':>12}{'other/owner':>13}")
    if res.status_missing:
        out(f"  {'status, ms':42}not measured: {res.status_missing}")
    else:
        for q in (0.5, 0.99):
            a, b = pct(res.status_owner, q), pct(res.status_other, q)
            out(f"  {f'status p{q * 100:g}, ms ({len(res.status_owner)} calls each)':42}{ms(a):>10}{ms(b):>12}"
                f"{b / a:>12.2f}x")
    if res.watch_missing:
        out(f"  {'watch event, call -> event, ms':42}not measured: {res.watch_missing}"
            + (f" (same host p50 {ms(pct(res.watch_same, 0.5))} ms)" if res.watch_same else ""))
    else:
        for q in (0.5, 1.0):
            a, b = pct(res.watch_same, q), pct(res.watch_cross, q)
            label = f"watch event {'p50' if q == 0.5 else 'max'}, ms ({len(res.watch_cross)} events)"
            out(f"  {label:42}{ms(a):>10}{ms(b):>12}{b / a:>12.2f}x")
    out("")
    idle = res.idle
    out(f"Redis when idle: {total} connected sessions on 3 hosts, {idle['window_s']:.0f} s window "
        f"(+ {plan.idle_s:g} s under MONITOR for the split by script)")
    out(f"  commands the hosts send, per session per minute      {idle['sent_per_session_min']:8.2f}"
        f"   (per host per minute {idle['sent_per_host_min']:.1f})")
    for name, v in sorted(idle["by_script_per_session_min"].items(), key=lambda kv: -kv[1]):
        role = SCRIPT_ROLE.get(name, "")
        out(f"    {name + (f' ({role})' if role else ''):50}{v:8.2f}")
    out(f"  commands Redis runs (inside scripts too), per session per minute {idle['redis_commands_per_session_min']:8.2f}")
    top = sorted(idle["by_command_per_session_min"].items(), key=lambda kv: -kv[1])[:10]
    out("    " + ", ".join(f"{k} {v:.2f}" for k, v in top))
    out(f"  Redis time in those commands, us per session per minute {idle['command_usec_per_session_min']:8.1f}")
    out(f"  redis-server CPU (user+sys, its background work too), of one core {idle['cpu_core_fraction']:8.4f}")
    p = projection(res, plan)
    bm = res.bench
    out("")
    out(f"projection to {PROJECT_TO:,} sessions, linear ({total / 3:.0f} sessions per host as here, so "
        f"{p['hosts']:.0f} hosts), next to redis-benchmark on the same server in this run")
    out(f"  {'':50}{'needed':>10}{'capacity':>11}{'ratio':>9}")
    out(f"  {'commands sent /s vs SET ops/s (-q)':50}{p['sent_ops_s']:>10,.0f}{bm.get('set', math.nan):>11,.0f}"
        f"{p['ratio_sent_set']:>9.4f}")
    out(f"  {'commands run /s (inside scripts too) vs SET ops/s':50}{p['redis_ops_s']:>10,.0f}"
        f"{bm.get('set', math.nan):>11,.0f}{p['ratio_redis_ops_set']:>9.4f}")
    renew_label = f"lease renewals /s vs RENEW of {bm.get('renew_batch', 0):.0f} leases a call"
    out(f"  {renew_label:50}{p['lease_renewals_s']:>10,.0f}{bm.get('renew_leases', math.nan):>11,.0f}"
        f"{p['ratio_renewals']:>9.4f}")
    out(f"  {'Redis time in commands, cores vs one core':50}{p['command_cpu_cores']:>10.3f}{1:>11}"
        f"{p['command_cpu_cores']:>9.4f}")
    out(f"  (GET {bm.get('get', math.nan):,.0f} ops/s; RENEW {bm.get('renew_calls', math.nan):,.0f} calls/s)")
    out("")
    out(f"failover after kill -9 (instant of SIGKILL -> connected on a survivor), s; lease_ttl {plan.lease_ttl:g}")
    for i, r in enumerate(res.failover):
        out(f"  round {i + 1}: {r['victim']} with {r['sessions']:3} sessions   p50 {r['p50']:6.2f}   max "
            f"{r['max']:6.2f}   first {r['min']:6.2f}   first->last {r['span']:6.2f}")
    allp = [r["p50"] for r in res.failover]
    allm = [r["max"] for r in res.failover]
    if res.failover:
        out(f"  over the rounds: p50 {statistics.median(allp):.2f}, max {max(allm):.2f}")
    c = res.churn
    if c:
        out("")
        out(f"lease churn: {c['sessions']} orphaned sessions, 2 survivors (max_concurrent_launches {plan.launches} "
            f"each, one launch {c['unit']:.2f} s), took {c['per_host']}")
        out(f"  kill -> first connected {c['first']:.2f} s, -> last {c['last']:.2f} s")
        out(f"  kill -> last vs the launch queues' bound (lease_ttl + {c['batches']} x one launch = "
            f"{c['queue_bound']:.2f} s): {c['last'] / c['queue_bound']:.2f}x")
        out(f"  kill -> last vs the orphan scans' pace (lease_ttl + {c['batches']} x renew period "
            f"{c['renew_every']:g} s = {c['scan_bound']:.2f} s): {c['last'] / c['scan_bound']:.2f}x")
    w = res.chromium
    if w:
        out("")
        out(f"real Chromium on the simulator: kill -9 of h1's daemon and browsers, {w['sessions']} linked sessions")
        out(f"  kill -> connected on a survivor: p50 {w['p50']:.2f} s, max {w['max']:.2f} s; QRs scanned on the way: "
            f"{w['qr_scanned']}" + (" (the login did not move with the session)" if w["qr_scanned"] else ""))
    out("")
    result = {
        "sessions_per_host": plan.sessions, "lease_ttl": plan.lease_ttl, "rounds": plan.rounds,
        "load": res.load, "launch_s": res.launch_s,
        "status_p50_ms": None if res.status_missing else [pct(res.status_owner, 0.5) * 1e3,
                                                          pct(res.status_other, 0.5) * 1e3],
        "status_ratio_p50": None if res.status_missing else pct(res.status_other, 0.5) / pct(res.status_owner, 0.5),
        "status_not_measured": res.status_missing,
        "watch_ratio_p50": None if res.watch_missing else pct(res.watch_cross, 0.5) / pct(res.watch_same, 0.5),
        "watch_not_measured": res.watch_missing,
        "idle": res.idle, "redis_benchmark": res.bench, "projection": p,
        "failover": res.failover, "churn": res.churn, "chromium": res.chromium,
    }
    return "\n".join(lines), result


def _redis_version() -> str:
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "?"
    m = re.search(r"v=(\S+)", out)
    return m.group(1) if m else "?"


def _revision() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__)), check=False).stdout.strip()
    except OSError:
        out = ""
    return out or "unknown"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 x 10 sessions, lease_ttl 3 s, one round (about 1 min)")
    p.add_argument("--sessions", type=int, help="sessions per host (default 50; --quick 10)")
    p.add_argument("--rounds", type=int, help="failover rounds (default 3; --quick 1)")
    p.add_argument("--lease-ttl", type=float, help="lease_ttl of every host (default 15 s; --quick 3 s)")
    p.add_argument("--idle", type=float, help="each idle window, seconds (default 60; --quick 10)")
    p.add_argument("--chromium", type=int, help="also K real Chromium sessions on the simulator (default 0)")
    p.add_argument("--churn", type=int, help="sessions orphaned at once in the churn step (default 100; 0: none)")
    args = p.parse_args(argv)
    plan = QUICK if args.quick else FULL
    for name, value in (("sessions", args.sessions), ("rounds", args.rounds), ("lease_ttl", args.lease_ttl),
                        ("idle_s", args.idle), ("churn", args.churn), ("chromium", args.chromium)):
        if value is not None:
            plan = dataclasses.replace(plan, **{name: value})
    for tool in ("redis-server", "redis-cli", "redis-benchmark"):
        if shutil.which(tool) is None:
            print(f"benchmark failed: {tool} is missing (Debian packages redis-server, redis-tools)", file=sys.stderr)
            return 1
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        res = run(plan)
    except (OSError, RuntimeError, WaDaemonError, subprocess.SubprocessError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    text, result = report(res, plan, time.monotonic() - started)
    print(text)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
