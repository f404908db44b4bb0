"""Sessions benchmark: real Chromium sessions through the daemon, against pyppeteer's default ``launch()``.

One run starts the WhatsApp Web simulator (``wa-daemon-sim``, time scale 1.0, so the
first QR holds for 60 s and nothing rotates while we measure) and then, one after the
other, never two at the same time:

* ``daemon``: the real ``wa-daemon`` (Chromium driver, ``--log-level warning``), a fresh
  one per measurement, driven through ``wa_daemon.Client``. Sessions are started with
  back-to-back ``connect`` calls; a ``watch`` of every session timestamps the moment each
  one reaches ``waiting_qr`` (its first QR). Two launch settings: the default launch
  queue (``max_concurrent_launches=2``) and ``max_concurrent_launches=N`` (every browser
  at once, as the baseline does).
* ``baseline``: this file in ``--baseline-runner`` mode, under plain asyncio (pyppeteer's
  own mode): ``N`` times, concurrently (``asyncio.gather``), what a straight port does:
  ``pyppeteer.launch(executablePath=..., headless=True, args=["--no-sandbox"],
  userDataDir=...)``, ``newPage()``, ``setUserAgent(<the daemon's desktop UA>)``,
  ``goto(URL)``, then waits for the first QR as whatsapp-web.js does on today's page:
  until ``window.require("WAWebConnModel").Conn.ref`` is set (``QR_READY``; the old
  ``div[data-ref]`` selector never matches the module page). Time to first QR runs from
  just before the ``gather`` to that.

Both are warmed first: one session (one browser) to its QR, then closed and gone, so a
process's one-off costs (the daemon imports pyppeteer and asks Chromium its version on its
first launch) stay out of the timed sessions; the daemon's first session is reported apart.

For each N (1, 5, 10; ``--quick``: 1, 5) and each round (N = 1: three times a round), every
configuration measures time to first QR, then (after 3 s of settling) the proportional set size (``Pss`` from
``/proc/PID/smaps_rollup``) of every process of the browsers' process groups, median of
three samples a second apart. Groups are found from the processes whose command line
holds the run's ``--user-data-dir``; the daemon starts each Chromium as a group leader,
the baseline runner is started as one, so its browsers share its group (the runner itself
is left out). Processes that leave the group (Chromium's crashpad handlers daemonize) are
found by an environment variable they inherit, and counted too. Memory is sampled when no
other Chromium runs on the machine (waiting up to 10 s): other browsers share the library
pages and lower the Pss. Rounds alternate the order of the configurations.

Then, at N = 10 (``--quick``: 5): the daemon with each candidate memory flag
(``--set chromium_args=[...]``); 10 sessions scanned through the simulator and left
connected while the daemon's CPU (``/proc/PID/stat`` utime+stime, every thread) is
counted for 60 s (``--quick``: 20 s); and ``kill -9`` of connected sessions' browsers,
timing the state change (watch event, and ``status`` polled every 2 ms) next to the
moment the killed process is gone (a pidfd, the floor), and next to pyppeteer's
``disconnected`` event in the baseline.

    python bench/sessions.py            # full run, about 9 minutes
    python bench/sessions.py --quick    # smoke run, under 3 minutes
    python bench/sessions.py --sizes 1 --rounds 4 --no-extras   # more samples of one case
    python bench/sessions.py --quick --idle-only --weight realistic   # connected sessions on a busy page

``--weight`` is the simulator's (``light``, the default, or ``realistic``: docs/simulator.md);
only connected sessions see the difference. ``--idle-only`` runs the idle window and the
``kill -9`` samples alone.

``--sandbox-cost`` measures Chromium's own sandbox alone: for each N, the daemon (every
browser at once) with the sandbox on and with ``chromium_args=["--no-sandbox"]``, its
browsers as the same user in both (``--browser-user``, ``nobody`` by default when the
benchmark runs as root: a root daemon needs ``browser_user`` for the sandbox; otherwise
the daemon's own user), order alternating by round; time to first QR and PSS per session
side by side, each daemon's ``health`` checked to run the mode it should:

    python bench/sessions.py --sandbox-cost --sizes 1,5 --rounds 3

A benchmark reports; it does not assert: the exit status is 0 whatever the figures
(1 if it could not run, 130 if interrupted). Every process it starts, and every Chromium
they start, is killed at the end, and the temporary directory removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import platform
import queue
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from wa_daemon import Client
from wa_daemon.daemon.browser.contract import DEFAULT as DEFAULT_CONTRACT
from wa_daemon.daemon.browser.process import CHROMIUM_FLAGS
from wa_daemon.errors import WaDaemonError
from wa_daemon.protocol import Snapshot, State, StateChanged

CHROMIUM = "/usr/bin/chromium"
TAG_ENV = "WA_BENCH_SESSIONS_TAG"  # every process of a configuration inherits it, escaped ones too
# The first QR's ref through WhatsApp Web's module layer, from the page contract (as
# whatsapp-web.js reads it), so the baseline waits for the same thing the daemon does.
_CONN = DEFAULT_CONTRACT.modules.conn
_CONN_EXPR = "".join(f"[{json.dumps(p)}]" for p in _CONN.path.split(".") if p)
QR_READY = (
    f"() => {{ try {{ const m = window.require({json.dumps(_CONN.module)}); "
    f"return !!(m && m{_CONN_EXPR}.{DEFAULT_CONTRACT.names.conn_ref}); }} catch (e) {{ return false; }} }}"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The memory flags commonly recommended for headless fleets; the daemon keeps none of them.
MEMORY_FLAGS = ("--renderer-process-limit=1", "--enable-low-end-device-mode", "--in-process-gpu")
# Chromium keeps a spare renderer ready for the next navigation. Switching it off takes a
# --disable-features of our own, which must repeat the daemon's list (one value per switch).
_DAEMON_DISABLED = next((f.split("=", 1)[1] for f in CHROMIUM_FLAGS if f.startswith("--disable-features=")), "")
NO_SPARE_RENDERER = "--disable-features=" + ",".join(x for x in (_DAEMON_DISABLED, "SpareRendererForSitePerProcess") if x)
FLAG_VARIANTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    *((flag, (flag,)) for flag in MEMORY_FLAGS),
    ("all three", MEMORY_FLAGS),
    ("--no-zygote", ("--no-zygote",)),
    ("no spare renderer", (NO_SPARE_RENDERER,)),
)

TARGET_CRASH_S = 0.5
TARGET_IDLE_CPU = 0.02  # of one core
SETTLE_S = 3.0  # after the last QR, before memory is sampled
QUIET_WAIT_S = 10.0  # at most this long for other people's Chromium to go away before sampling
MEMORY_SAMPLES = 3


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ============================================================================ /proc


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    state: str
    ticks: int  # utime + stime, every thread
    argv: tuple[str, ...]

    @property
    def kind(self) -> str:
        """browser, zygote, gpu-process, renderer, utility:network, crashpad..."""
        name = os.path.basename(self.argv[0]) if self.argv else "?"
        if "crashpad" in name:
            return "crashpad"
        kind, sub = "", ""
        for arg in self.argv[1:]:
            if arg.startswith("--type="):
                kind = arg[7:]
            elif arg.startswith("--utility-sub-type="):
                sub = arg[19:].split(".")[0]
        if kind == "utility" and sub:
            return f"utility:{sub}"
        return kind or ("browser" if "chrom" in name else name)


def read_proc(pid: int) -> ProcInfo | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as fb:
            cmdline = fb.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    argv = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
    if len(argv) == 1 and " --" in argv[0]:
        # Chromium's children rewrite their command line into one string (setproctitle).
        # Split at spaces: an argument holding spaces (the user agent) comes out in pieces,
        # which is harmless for what we look for (--type=, --user-data-dir=).
        argv = argv[0].split(" ")
    return ProcInfo(pid, int(fields[1]), int(fields[2]), fields[0], int(fields[11]) + int(fields[12]), tuple(argv))


def all_procs() -> list[ProcInfo]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = read_proc(int(entry))
            if info is not None:
                out.append(info)
    return out


def env_tag(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    key = TAG_ENV.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return item[len(key):].decode(errors="replace")
    return None


def tagged(prefix: str) -> list[int]:
    """Live processes whose tag starts with ``prefix`` (this process is never one)."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            tag = env_tag(int(entry))
            if tag is not None and tag.startswith(prefix):
                info = read_proc(int(entry))
                if info is not None and info.state != "Z":
                    found.append(int(entry))
    return found


_ROLLUP_KEYS = ("Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Rss", "Private_Clean", "Private_Dirty")


def smaps(pid: int) -> dict[str, int]:
    """From /proc/PID/smaps_rollup, in kB: pss; pss_file (file-backed: shared libraries, the part
    other processes mapping the same files share); pss_anon (anonymous + shmem: only ever
    shared within a Chromium's own tree); uss (private clean + dirty); rss. Empty if gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in _ROLLUP_KEYS:
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError):
        return {}
    if "Pss" not in out:
        return {}
    return {"pss": out["Pss"], "pss_file": out.get("Pss_File", 0),
            "pss_anon": out.get("Pss_Anon", 0) + out.get("Pss_Shmem", 0), "rss": out.get("Rss", 0),
            "uss": out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)}


def children_walk(pid: int) -> set[int]:
    """What walking /proc/PID/task/PID/children finds (the main thread's children only)."""
    seen: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return seen


@dataclass
class TreeMemory:
    pss_kb: int = 0
    pss_anon_kb: int = 0
    pss_file_kb: int = 0
    uss_kb: int = 0
    rss_kb: int = 0
    processes: int = 0
    browsers: int = 0
    outside: int = 0  # processes outside the browsers' groups (crashpad handlers), counted in the totals
    outside_pss_kb: int = 0
    walk_processes: int = 0  # what a children walk from the browsers would have found
    by_kind: dict[str, int] = field(default_factory=dict)  # Pss kB per process kind
    pgids: set[int] = field(default_factory=set)
    foreign: int = 0  # Chromium processes of others on the machine at the time


def measure_tree(needle: str, tag: str, exclude: set[int]) -> TreeMemory:
    """Every process of the groups of the browsers whose command line holds ``needle``,
    plus the processes tagged ``tag`` that left those groups; ``exclude``: controllers."""
    procs = [p for p in all_procs() if p.state != "Z"]
    marked = [p for p in procs if any(needle in a for a in p.argv)]
    pgids = {p.pgid for p in marked}
    members = [p for p in procs if p.pgid in pgids and p.pid not in exclude]
    member_pids = {p.pid for p in members}
    outside = [p for p in procs if p.pid not in member_pids and p.pid not in exclude
               and p.pgid not in pgids and env_tag(p.pid) == tag]
    mem = TreeMemory(pgids=pgids)
    browsers = [p for p in marked if p.kind == "browser"]
    mem.browsers = len(browsers)
    walked: set[int] = set()
    for b in browsers:
        walked |= children_walk(b.pid)
    mem.walk_processes = len(walked)
    for p in members + outside:
        m = smaps(p.pid)
        if not m:
            continue
        mem.pss_kb += m["pss"]
        mem.pss_anon_kb += m["pss_anon"]
        mem.pss_file_kb += m["pss_file"]
        mem.uss_kb += m["uss"]
        mem.rss_kb += m["rss"]
        mem.processes += 1
        mem.by_kind[p.kind] = mem.by_kind.get(p.kind, 0) + m["pss"]
        if p in outside:
            mem.outside += 1
            mem.outside_pss_kb += m["pss"]
    return mem


def sample_memory(fleet: Fleet, needle: str, tag: str, exclude: set[int]) -> TreeMemory:
    """The median (by Pss) of a few samples a second apart, taken when no other Chromium runs
    on the machine if that happens within QUIET_WAIT_S (other browsers share our library pages,
    and lower our Pss)."""
    deadline = time.monotonic() + QUIET_WAIT_S
    while foreign_chromium(fleet.run_tag) and time.monotonic() < deadline:
        time.sleep(0.5)
    samples = []
    for i in range(MEMORY_SAMPLES):
        if i:
            time.sleep(1.0)
        mem = measure_tree(needle, tag, exclude)
        mem.foreign = foreign_chromium(fleet.run_tag)
        fleet.pgids |= mem.pgids
        samples.append(mem)
    samples.sort(key=lambda m: m.pss_kb)
    return samples[len(samples) // 2]


def foreign_chromium(run_tag: str) -> int:
    """Chromium processes of others on this machine. Chromium's children rewrite their command
    line over their environment, so ours are recognised by group: a group whose leader is ours."""
    procs = [p for p in all_procs() if p.state != "Z"]
    ours = {p.pgid for p in procs if (env_tag(p.pid) or "").startswith(run_tag + "/")}
    return sum(1 for p in procs if p.kind != "crashpad" and p.argv and "chrom" in os.path.basename(p.argv[0])
               and p.pgid not in ours and not (env_tag(p.pid) or "").startswith(run_tag + "/"))


def wait_pidfd(pid: int) -> Callable[[], float]:
    """Start watching ``pid`` from a thread; the returned function gives the monotonic time it ended."""
    fd = os.pidfd_open(pid)
    result: list[float] = []

    def run() -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll(10_000)
        result.append(time.monotonic())
        os.close(fd)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def done() -> float:
        thread.join(11)
        return result[0] if result else math.nan

    return done


# ============================================================================ processes


class Fleet:
    """Every process of the run. Each configuration's processes carry ``TAG_ENV=<run>/<name>``,
    so whatever escapes its process group is still found, counted and killed."""

    def __init__(self, tmp: Path, chromium: str, weight: str = "light") -> None:
        self.tmp = tmp
        self.chromium = chromium
        self.weight = weight
        self.run_tag = f"wsb{os.getpid()}x{int(time.time())}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pgids: set[int] = set()  # every process group of ours ever seen: checked at the end
        self._files: list[IO[bytes]] = []
        self._seq = 0
        self.url = ""

    def unique(self, key: str) -> str:
        """A file-name-safe name, new for every configuration run."""
        self._seq += 1
        safe = "".join(c if c.isalnum() or c in "-_" else "" for c in key.replace(":", "-"))
        return f"{self._seq:02d}-{safe}"[:40]

    def tag(self, name: str) -> str:
        return f"{self.run_tag}/{name}/"  # the closing slash: b1's tag is no prefix of b10's

    def spawn(self, name: str, argv: list[str], *, stdin: int | None = subprocess.DEVNULL,
              stdout: int | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        err = open(self.tmp / f"{name}.stderr", "wb")
        self._files.append(err)
        env = {**os.environ, TAG_ENV: self.tag(name)}
        proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=err, env=env,
                                start_new_session=True)  # a group of its own: ^C reaches only us
        self.procs.append(proc)
        self.pgids.add(proc.pid)
        return proc

    def stderr_tail(self, name: str) -> str:
        try:
            return (self.tmp / f"{name}.stderr").read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def start_sim(self) -> str:
        proc = self.spawn("sim", [sys.executable, "-m", "wa_daemon.sim.main", "--port", "0", "--quiet",
                                  "--weight", self.weight], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("http"):
            raise RuntimeError(f"the simulator did not start: {self.stderr_tail('sim')}")
        self.url = line
        return line

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def reap(self, prefix: str, timeout: float = 10.0) -> int:
        """SIGKILL every live process whose tag starts with ``prefix``; returns how many there were."""
        found = tagged(prefix)
        total = len(found)
        deadline = time.monotonic() + timeout
        while found and time.monotonic() < deadline:
            for pid in found:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            for proc in self.procs:
                proc.poll()  # reap our own children
            time.sleep(0.05)
            found = tagged(prefix)
        return total

    def ours(self, p: ProcInfo) -> bool:
        tmp = str(self.tmp)
        return any(tmp in a for a in p.argv) or (env_tag(p.pid) or "").startswith(self.run_tag + "/")

    def leftovers(self) -> list[ProcInfo]:
        """Live processes that name the temporary directory, carry this run's tag, or belong
        to one of our groups (a group outlives its leader; a live leader must still be ours)."""
        me = os.getpid()
        procs = {p.pid: p for p in all_procs() if p.state != "Z"}
        found = []
        for p in procs.values():
            if p.pid == me:
                continue
            leader = procs.get(p.pgid)
            in_our_group = p.pgid in self.pgids and (leader is None or self.ours(leader))
            if in_our_group or self.ours(p):
                found.append(p)
        return found

    def close(self) -> list[ProcInfo]:
        for proc in self.procs:
            self.stop(proc, 20)
        self.reap(self.run_tag + "/")
        for f in self._files:
            f.close()
        return self.leftovers()


Predicate = Callable[[float, str, State, State], bool]  # (arrival, session, from, to)


def reached_after(state: State, since: float) -> Predicate:
    return lambda t, sid, src, dst: dst == state and t >= since


def left_connected_after(since: float) -> Predicate:
    return lambda t, sid, src, dst: src == State.CONNECTED and t >= since


class Recorder:
    """A watch of every session in a thread: arrival time (monotonic) of each state change."""

    def __init__(self, socket_path: str) -> None:
        self.client = Client(socket_path, timeout=30)
        self.watch = self.client.watch(None, timeout=86400)
        self.cond = threading.Condition()
        self.events: list[tuple[float, str, State, State]] = []  # (t, session, from, to)
        self.state: dict[str, State] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for ev in self.watch:
                now = time.monotonic()
                with self.cond:
                    if isinstance(ev, StateChanged):
                        sid = ev.status.session
                        self.events.append((now, sid, ev.transition.from_state, ev.transition.to_state))
                        self.state[sid] = ev.transition.to_state
                    elif isinstance(ev, Snapshot):
                        self.state[ev.status.session] = ev.status.state
                    self.cond.notify_all()
        except (WaDaemonError, OSError, ValueError):
            pass

    def first(self, pred: Predicate) -> dict[str, float]:
        out: dict[str, float] = {}
        for t, sid, src, dst in self.events:
            if sid not in out and pred(t, sid, src, dst):
                out[sid] = t
        return out

    def wait(self, sids: Iterable[str], pred: Predicate, timeout: float, what: str) -> dict[str, float]:
        """First event per session matching ``pred``, for every session of ``sids``."""
        wanted = set(sids)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = self.first(pred)
                if wanted <= got.keys():
                    return {s: got[s] for s in wanted}
                failed = [s for s in wanted if self.state.get(s) in (State.FAILED, State.LOGGED_OUT)]
                if failed:
                    raise RuntimeError(f"sessions {failed} ended in {self.state[failed[0]].value} waiting for {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{len(wanted - got.keys())}/{len(wanted)} sessions never reached {what}")
                self.cond.wait(left)

    def close(self) -> None:
        self.watch.close()
        self.client.close()
        self.thread.join(5)


class DaemonRun:
    def __init__(self, fleet: Fleet, name: str, settings: list[str]) -> None:
        self.fleet = fleet
        self.name = name
        self.state_dir = (fleet.tmp / f"{name}-state").resolve()
        self.sock = str(fleet.tmp / f"{name}.sock")
        argv = [sys.executable, "-m", "wa_daemon.daemon.main", "--socket", self.sock,
                "--state-dir", str(self.state_dir), "--wa-url", fleet.url + "/", "--log-level", "warning",
                "--set", f"chromium_path={fleet.chromium}"]
        for s in settings:
            argv += ["--set", s]
        self.proc = fleet.spawn(name, argv)
        self.client = Client(self.sock, timeout=60)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}: {fleet.stderr_tail(name)}")
            try:
                self.client.ping()
                break
            except WaDaemonError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not answer within 30 s") from None
                time.sleep(0.05)
        self.recorder = Recorder(self.sock)

    @property
    def needle(self) -> str:
        return f"--user-data-dir={self.state_dir}/sessions/"

    def browser_pid(self, sid: str) -> int:
        flag = f"--user-data-dir={self.state_dir}/sessions/{sid}/profile"
        for p in all_procs():
            if p.state != "Z" and flag in p.argv and p.kind == "browser":
                return p.pid
        raise RuntimeError(f"no browser process for session {sid}")

    def warm_up(self) -> float:
        """One session to its first QR, then deleted and its browser gone: the daemon's one-off
        costs (importing pyppeteer, asking Chromium its version) stay out of the timed sessions.
        Returns that first session's time to QR."""
        cold = self.start(["warmup"])[0]
        pgid = self.browser_pid("warmup")
        self.fleet.pgids.add(pgid)
        self.client.delete("warmup")
        deadline = time.monotonic() + 15
        while any(p.pgid == pgid and p.state != "Z" for p in all_procs()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the warm-up browser did not go away")
            time.sleep(0.05)
        return cold

    def start(self, sids: list[str], timeout: float = 180) -> list[float]:
        """Connect every session back to back; seconds from each connect call to its first QR."""
        t_connect: dict[str, float] = {}
        for sid in sids:
            t_connect[sid] = time.monotonic()
            self.client.connect(sid)
        got = self.recorder.wait(sids, reached_after(State.WAITING_QR, 0.0), timeout, "waiting_qr")
        return [got[s] - t_connect[s] for s in sids]

    def memory(self) -> TreeMemory:
        return sample_memory(self.fleet, self.needle, self.fleet.tag(self.name), {self.proc.pid})

    def controller_pss_kb(self) -> int:
        return smaps(self.proc.pid).get("pss", 0)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.recorder.close()
        self.client.close()
        self.fleet.stop(self.proc, 40)
        self.fleet.reap(self.fleet.tag(self.name))


class BaselineRun:
    """The runner subprocess (``--baseline-runner``): N pyppeteer.launch() browsers."""

    def __init__(self, fleet: Fleet, name: str, count: int, user_agent: str) -> None:
        self.fleet = fleet
        self.name = name
        self.profiles = (fleet.tmp / f"{name}-profiles").resolve()
        self.profiles.mkdir()
        argv = [sys.executable, os.path.abspath(__file__), "--baseline-runner", "--url", fleet.url + "/",
                "--count", str(count), "--profile-root", str(self.profiles), "--user-agent", user_agent,
                "--chromium", fleet.chromium]
        self.proc = fleet.spawn(name, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self.pids: list[int] = []

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(raw))
        self.lines.put({"event": "eof"})

    def next(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{self.name}: no {event!r} within {timeout:g} s") from None
            if msg.get("event") == event:
                return msg
            if msg.get("event") in ("error", "eof"):
                raise RuntimeError(f"{self.name}: {msg.get('message', 'exited')}: {self.fleet.stderr_tail(self.name)}")

    def start(self, timeout: float = 180) -> list[float]:
        msg = self.next("ready", timeout)
        self.pids = [int(p) for p in msg["pids"]]
        return [float(x) for x in msg["qr"]]

    @property
    def needle(self) -> str:
        return f"--user-data-dir={self.profiles}/"

    def memory(self) -> TreeMemory:
        return sample_memory(self.fleet, self.needle, self.fleet.tag(self.name), {self.proc.pid})

    def controller_pss_kb(self) -> int:
        return smaps(self.proc.pid).get("pss", 0)

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.flush()
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        # pyppeteer with a userDataDir of ours never waits for its browsers: end the whole group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.fleet.reap(self.fleet.tag(self.name))


# ============================================================================ baseline runner


def baseline_runner(args: argparse.Namespace) -> int:
    """Runs in its own process, under asyncio: what a straight port of the original app does."""

    def emit(msg: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    async def main() -> None:
        import pyppeteer

        for name in ("pyppeteer", "websockets"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        loop = asyncio.get_running_loop()
        browsers: list[Any] = []

        async def open_qr(profile: str) -> Any:
            browser = await pyppeteer.launch(
                executablePath=args.chromium, headless=True, args=["--no-sandbox"], userDataDir=profile,
            )
            browsers.append(browser)
            pid = browser.process.pid
            browser.on("disconnected", lambda *_: emit({"event": "gone", "pid": pid, "t": time.monotonic()}))
            page = await browser.newPage()
            await page.setUserAgent(args.user_agent)
            await page.goto(args.url)
            await page.waitForFunction(QR_READY, {"polling": "raf"})
            return browser

        async def one(i: int, t0: float) -> float:
            await open_qr(os.path.join(args.profile_root, f"b{i:02d}"))
            return time.monotonic() - t0

        try:
            # Warm-up, as for the daemon: one browser to its QR and closed, and every
            # process of it gone (they share this process's group), before the timed ones.
            warm = await open_qr(args.profile_root + "-warmup")
            browsers.remove(warm)
            await warm.close()
            await loop.run_in_executor(None, warm.process.wait)
            me, group = os.getpid(), os.getpgid(0)
            for _ in range(300):
                if not any(p.pgid == group and p.pid != me and p.state != "Z" for p in all_procs()):
                    break
                await asyncio.sleep(0.05)
            t0 = time.monotonic()
            qr = await asyncio.gather(*(one(i, t0) for i in range(args.count)))
        except Exception as exc:
            emit({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        else:
            emit({"event": "ready", "qr": qr, "pids": [b.process.pid for b in browsers]})
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line or line.strip() == "quit":
                    break
        for b in browsers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(b.close(), 5)

    asyncio.run(main())
    return 0


# ============================================================================ the run


@dataclass
class Plan:
    sizes: tuple[int, ...]
    rounds: int
    flag_n: int
    flag_variants: tuple[tuple[str, tuple[str, ...]], ...]
    idle_n: int
    idle_s: float
    crash_samples: int
    baseline_crash_samples: int
    n1_repeats: int  # N = 1 is cheap and gives one QR sample a run: run it this many times a round
    extras: bool = True  # the memory flags, the idle window and the kill -9 samples
    weight: str = "light"  # the simulator's --weight: realistic builds a busy account once connected
    idle_only: bool = False  # only the idle window and the kill -9 samples (connected sessions)
    sandbox_cost: bool = False  # only the daemon with and without Chromium's sandbox
    browser_user: str | None = None  # browser_user of the daemon, for --sandbox-cost under root


FULL = Plan(sizes=(1, 5, 10), rounds=2, flag_n=10, flag_variants=FLAG_VARIANTS, idle_n=10, idle_s=60.0,
            crash_samples=10, baseline_crash_samples=5, n1_repeats=3)
QUICK = Plan(sizes=(1, 5), rounds=1, flag_n=5, flag_variants=(("all three", MEMORY_FLAGS),), idle_n=10,
             idle_s=20.0, crash_samples=5, baseline_crash_samples=3, n1_repeats=1)


@dataclass
class ConfigResult:
    """Every round of one configuration."""

    qr: list[float] = field(default_factory=list)  # seconds, every session of every round
    memory: list[TreeMemory] = field(default_factory=list)
    controller_pss_kb: list[int] = field(default_factory=list)
    cold: list[float] = field(default_factory=list)  # the daemon's first session after it started
    sessions: int = 0

    def clean(self) -> list[TreeMemory]:
        """The samples taken while no other Chromium ran on the machine, if there are any."""
        return [m for m in self.memory if not m.foreign] or self.memory

    def med(self, fn: Callable[[TreeMemory], float]) -> float:
        samples = self.clean()
        return statistics.median(fn(m) for m in samples) if samples else math.nan

    def per_session_mb(self, fn: Callable[[TreeMemory], float]) -> float:
        return self.med(fn) / 1024 / max(1, self.sessions)


@dataclass
class Results:
    configs: dict[str, ConfigResult] = field(default_factory=dict)
    idle: dict[str, float] = field(default_factory=dict)
    crash_daemon: list[float] = field(default_factory=list)  # watch event
    crash_poll: list[float] = field(default_factory=list)  # status polled every 2 ms
    crash_floor: list[float] = field(default_factory=list)  # pidfd
    crash_baseline: list[float] = field(default_factory=list)  # pyppeteer "disconnected"
    crash_baseline_floor: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    chromium_version: str = ""

    def get(self, key: str) -> ConfigResult:
        return self.configs.setdefault(key, ConfigResult())


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))]


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def user_agent(chromium: str) -> str:
    from wa_daemon.daemon.browser.process import chromium_version, desktop_user_agent

    return desktop_user_agent(chromium_version(chromium))


def scan(url: str, ref: str) -> None:
    req = urllib.request.Request(url + "/__sim__/scan", data=ref.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


def run_daemon(fleet: Fleet, res: Results, key: str, n: int, settings: list[str], warm_up: bool = True,
               sandbox: str | None = None) -> None:
    """``sandbox``: "on" or "off", what the daemon's ``browser_sandbox`` health check must say."""
    progress(f"  {key}: daemon, {n} session(s), {' '.join(settings) or 'defaults'}")
    d = DaemonRun(fleet, fleet.unique(key), settings)
    try:
        if sandbox is not None:
            said = next((c.message for c in d.client.health().checks if c.name == "browser_sandbox"), "")
            if not said.startswith(sandbox):
                raise RuntimeError(f"{key}: the daemon's sandbox is not {sandbox}: {said!r}")
        cr = res.get(key)
        cr.sessions = n
        if warm_up:
            cr.cold.append(d.warm_up())
        cr.qr += d.start([f"s{i:02d}" for i in range(n)])
        time.sleep(SETTLE_S)
        cr.memory.append(d.memory())
        cr.controller_pss_kb.append(d.controller_pss_kb())
    finally:
        d.close()


def run_baseline(fleet: Fleet, res: Results, key: str, n: int, ua: str, crash_samples: int = 0) -> None:
    progress(f"  {key}: pyppeteer launch(), {n} browser(s)")
    b = BaselineRun(fleet, fleet.unique(key), n, ua)
    try:
        cr = res.get(key)
        cr.sessions = n
        cr.qr += b.start()
        time.sleep(SETTLE_S)
        cr.memory.append(b.memory())
        cr.controller_pss_kb.append(b.controller_pss_kb())
        for pid in b.pids[:crash_samples]:
            floor = wait_pidfd(pid)
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(RuntimeError):
                while True:
                    msg = b.next("gone", 5)
                    if msg["pid"] == pid:
                        res.crash_baseline.append(float(msg["t"]) - t0)
                        break
            res.crash_baseline_floor.append(floor() - t0)
            time.sleep(0.3)
    finally:
        b.close()


def run_idle_and_crash(fleet: Fleet, res: Results, plan: Plan) -> None:
    n = plan.idle_n
    progress(f"idle: {n} sessions connected for {plan.idle_s:g} s, then kill -9")
    # Relaunches after a kill wait 60 s instead of 5: they must not load the CPU while later kills are timed.
    d = DaemonRun(fleet, "idle", ["reconnect_base_delay=60"])
    try:
        sids = [f"c{i:02d}" for i in range(n)]
        d.start(sids)
        t_scan = time.monotonic()
        for sid in sids:
            scan(fleet.url, d.client.qr(sid).data)
        d.recorder.wait(sids, reached_after(State.CONNECTED, t_scan), 120, "connected")
        # The app screens settle; the realistic page also builds its account (about 1.5 s of a core each).
        time.sleep(3.0 if plan.weight == "light" else 15.0)
        daemon0 = read_proc(d.proc.pid)
        sim0 = read_proc(fleet.procs[0].pid)
        pgids = {p.pgid for p in all_procs() if any(d.needle in a for a in p.argv)}
        chrome0 = {p.pid: p.ticks for p in all_procs() if p.pgid in pgids}
        t0 = time.monotonic()
        time.sleep(plan.idle_s)
        wall = time.monotonic() - t0
        daemon1 = read_proc(d.proc.pid)
        sim1 = read_proc(fleet.procs[0].pid)
        chrome1 = {p.pid: p.ticks for p in all_procs() if p.pgid in pgids}
        assert daemon0 and daemon1 and sim0 and sim1
        ticks = sum(chrome1[p] - chrome0[p] for p in chrome1.keys() & chrome0.keys())
        res.idle = {
            "n": n,
            "wall": wall,
            "daemon": (daemon1.ticks - daemon0.ticks) / CLK_TCK / wall,
            "chromium": ticks / CLK_TCK / wall,
            "sim": (sim1.ticks - sim0.ticks) / CLK_TCK / wall,
            "threads": float(_threads(d.proc.pid)),
            "still_connected": float(sum(1 for s in d.client.list() if s.state == State.CONNECTED)),
        }
        mem = d.memory()
        res.idle["pss_mb_per_session"] = mem.pss_kb / 1024 / n
        res.idle["daemon_pss_mb"] = d.controller_pss_kb() / 1024

        progress(f"crash: kill -9 of {plan.crash_samples} connected browsers")
        for sid in sids[:plan.crash_samples]:
            if d.client.status(sid).state != State.CONNECTED:
                continue
            pid = d.browser_pid(sid)
            floor = wait_pidfd(pid)
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            polled = math.nan
            while time.monotonic() - t0 < 10:
                if d.client.status(sid).state != State.CONNECTED:
                    polled = time.monotonic() - t0
                    break
                time.sleep(0.002)
            got = d.recorder.wait([sid], left_connected_after(t0), 10, "a crash")
            res.crash_daemon.append(got[sid] - t0)
            res.crash_poll.append(polled)
            res.crash_floor.append(floor() - t0)
            time.sleep(0.5)
    finally:
        d.close()


# (label, what the health check must say, the daemon's extra settings)
SANDBOX_MODES: tuple[tuple[str, str, list[str]], ...] = (
    ("sandbox", "on", []),
    ("no sandbox", "off", ["chromium_args=" + json.dumps(["--no-sandbox"])]),
)


def run_sandbox_cost(fleet: Fleet, res: Results, plan: Plan, tmp: Path) -> None:
    """The daemon with and without Chromium's own sandbox, its browsers as one user in both."""
    user = [f"browser_user={plan.browser_user}"] if plan.browser_user else []
    if plan.browser_user:
        tmp.chmod(0o711)  # the state directories lie here: browser_user passes through
    for r in range(plan.rounds):
        for n in plan.sizes:
            progress(f"round {r + 1}/{plan.rounds}, N={n}")
            for i in range(plan.n1_repeats if n == 1 else 1):
                order = SANDBOX_MODES if (r + i) % 2 == 0 else tuple(reversed(SANDBOX_MODES))
                for label, said, extra in order:
                    run_daemon(fleet, res, f"x{n}:{label}", n, [f"max_concurrent_launches={n}", *user, *extra],
                               sandbox=said)


def sandbox_report(res: Results, plan: Plan) -> list[str]:
    lines = [f"Chromium's own sandbox, daemon with every browser at once; browsers run as "
             f"{plan.browser_user or 'the daemon' + chr(39) + 's user'}",
             f"  {'':34}{'sandbox':>10}{'no sandbox':>12}{'ratio':>8}"]
    for n in plan.sizes:
        on, off = res.get(f"x{n}:sandbox"), res.get(f"x{n}:no sandbox")
        lines.append(f"N = {n} ({len(on.qr)} / {len(off.qr)} sessions timed, {len(on.memory)} / {len(off.memory)} "
                     "memory samples)")
        rows = [
            ("first QR p50, s", p50(on.qr), p50(off.qr), 2),
            ("first QR p95, s", percentile(on.qr, 0.95), percentile(off.qr, 0.95), 2),
            ("daemon's first session, p50, s", p50(on.cold), p50(off.cold), 2),
            ("PSS per session, MB", on.per_session_mb(lambda m: m.pss_kb), off.per_session_mb(lambda m: m.pss_kb), 1),
            ("  anonymous + shmem", on.per_session_mb(lambda m: m.pss_anon_kb),
             off.per_session_mb(lambda m: m.pss_anon_kb), 1),
            ("  file-backed (libraries)", on.per_session_mb(lambda m: m.pss_file_kb),
             off.per_session_mb(lambda m: m.pss_file_kb), 1),
            ("USS per session, MB", on.per_session_mb(lambda m: m.uss_kb), off.per_session_mb(lambda m: m.uss_kb), 1),
            ("processes per session", on.med(lambda m: m.processes) / n, off.med(lambda m: m.processes) / n, 1),
        ]
        for label, a, b, digits in rows:
            ratio = a / b if b else math.nan
            lines.append(f"  {label:34}{a:>10.{digits}f}{b:>12.{digits}f}{ratio:>7.2f}x")
        kinds = sorted({k for m in on.memory + off.memory for k in m.by_kind})
        for k in kinds:
            a = statistics.median(m.by_kind.get(k, 0) for m in on.clean()) / 1024 / n
            b = statistics.median(m.by_kind.get(k, 0) for m in off.clean()) / 1024 / n
            lines.append(f"    PSS {k:30}{a:>10.1f}{b:>12.1f}")
    return [*lines, ""]


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def run(plan: Plan, chromium: str) -> Results:
    res = Results()
    from wa_daemon.daemon.browser.process import chromium_version

    res.chromium_version = chromium_version(chromium)
    res.load.append(os.getloadavg()[0])
    ua = user_agent(chromium)
    tmp = Path(tempfile.mkdtemp(prefix="wa-bench-sessions-")).resolve()
    fleet = Fleet(tmp, chromium, plan.weight)
    try:
        url = fleet.start_sim()
        progress(f"simulator at {url} (--weight {plan.weight}); temporary directory {tmp}")
        if plan.idle_only:
            run_idle_and_crash(fleet, res, plan)
            return res
        if plan.sandbox_cost:
            run_sandbox_cost(fleet, res, plan, tmp)
            return res
        progress("warm-up (one browser, not counted)")
        run_baseline(fleet, Results(), "warmup", 1, ua)
        for r in range(plan.rounds):
            for n in plan.sizes:
                progress(f"round {r + 1}/{plan.rounds}, N={n}")
                steps: list[Callable[[], None]] = [
                    functools.partial(run_daemon, fleet, res, f"d{n}:all", n, [f"max_concurrent_launches={n}"]),
                    functools.partial(run_baseline, fleet, res, f"b{n}", n, ua,
                                      plan.baseline_crash_samples if plan.extras and n == max(plan.sizes) and r == 0 else 0),
                ]
                if n > 2:  # the default queue (2 launches at a time) differs from "all at once"
                    steps.insert(0, functools.partial(run_daemon, fleet, res, f"d{n}:queue", n, []))
                for i in range(plan.n1_repeats if n == 1 else 1):
                    for step in steps if (r + i) % 2 == 0 else reversed(steps):
                        step()
        if not plan.extras:
            return res
        n = plan.flag_n
        progress(f"memory flags, N={n}")
        base = [f"max_concurrent_launches={n}"]
        # No warm-up here: memory is the point, and the one-off costs land on the first session of each alike.
        run_daemon(fleet, res, f"f{n}:as is", n, base, warm_up=False)
        for label, flags in plan.flag_variants:
            run_daemon(fleet, res, f"f{n}:{label}", n, [*base, "chromium_args=" + json.dumps(list(flags))],
                       warm_up=False)
        run_idle_and_crash(fleet, res, plan)
    finally:
        left = fleet.close()
        res.leftovers = [f"{p.pid} {' '.join(p.argv)[:120]}" for p in left]
        for p in left:  # never leave anything behind, even what the report will complain about
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
        res.load.append(os.getloadavg()[0])
    return res


# ============================================================================ report


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 1000:.0f}"


def report(res: Results, plan: Plan, elapsed: float) -> str:
    lines: list[str] = []
    out = lines.append
    out("")
    out(f"wa-daemon sessions benchmark: {plan.rounds} round(s), N in {plan.sizes}, --weight {plan.weight}"
        f"{', idle only' if plan.idle_only else ''}{', sandbox cost' if plan.sandbox_cost else ''}; "
        f"Chromium {res.chromium_version}; "
        f"source {_revision()}")
    out(f"machine: {os.cpu_count()} CPUs, {_mem_total_gb():.0f} GB, Python {platform.python_version()}; "
        f"load average {res.load[0]:.1f} at start, {res.load[-1]:.1f} at end; run took {elapsed:.0f} s")
    foreign = [m.foreign for c in res.configs.values() for m in c.memory]
    busy = sum(1 for f in foreign if f)
    out(f"other people's Chromium processes running during {busy} of {len(foreign)} memory samples"
        + (f" (up to {max(foreign)})" if busy else ""))
    out("memory: Chromium processes only (browser groups + escaped crashpad handlers), per session, "
        "median over runs (over the runs with no other Chromium on the machine, if any); "
        f"QR: every session of every run (N = 1: {plan.n1_repeats * plan.rounds} runs)")
    out("")
    if plan.sandbox_cost:
        return "\n".join(lines + sandbox_report(res, plan) + per_configuration(res))
    head = f"{'':38}{'daemon, queue 2':>17}{'daemon, N at once':>19}{'launch()':>11}{'at once/launch()':>18}"
    out(head)
    out("-" * len(head))
    for n in plan.sizes:
        q = res.configs.get(f"d{n}:queue") or res.configs.get(f"d{n}:all")
        a, b = res.get(f"d{n}:all"), res.get(f"b{n}")
        assert q is not None
        out(f"N = {n}" + ("  (queue 2 = at once for N <= 2)" if n <= 2 else ""))

        def row(label: str, fq: float, fa: float, fb: float, digits: int = 2) -> None:
            ratio = fa / fb if fb else math.nan
            out(f"  {label:36}{fq:>17.{digits}f}{fa:>19.{digits}f}{fb:>11.{digits}f}{ratio:>17.2f}x")

        row("first QR p50, s", p50(q.qr), p50(a.qr), p50(b.qr))
        row("first QR p95, s", percentile(q.qr, 0.95), percentile(a.qr, 0.95), percentile(b.qr, 0.95))
        out(f"  {'  daemon, first session after start':36}{p50(q.cold):>17.2f}{p50(a.cold):>19.2f}"
            f"{'-':>11}  (p50; not timed above)")
        row("PSS per session, MB", q.per_session_mb(lambda m: m.pss_kb), a.per_session_mb(lambda m: m.pss_kb),
            b.per_session_mb(lambda m: m.pss_kb), 1)
        row("  anonymous + shmem", q.per_session_mb(lambda m: m.pss_anon_kb),
            a.per_session_mb(lambda m: m.pss_anon_kb), b.per_session_mb(lambda m: m.pss_anon_kb), 1)
        row("  file-backed (libraries)", q.per_session_mb(lambda m: m.pss_file_kb),
            a.per_session_mb(lambda m: m.pss_file_kb), b.per_session_mb(lambda m: m.pss_file_kb), 1)
        row("USS per session, MB", q.per_session_mb(lambda m: m.uss_kb), a.per_session_mb(lambda m: m.uss_kb),
            b.per_session_mb(lambda m: m.uss_kb), 1)
        row("RSS per session, MB", q.per_session_mb(lambda m: m.rss_kb), a.per_session_mb(lambda m: m.rss_kb),
            b.per_session_mb(lambda m: m.rss_kb), 1)
        row("processes per session", q.med(lambda m: m.processes) / n, a.med(lambda m: m.processes) / n,
            b.med(lambda m: m.processes) / n, 1)
        row("  of which outside the group", q.med(lambda m: m.outside) / n, a.med(lambda m: m.outside) / n,
            b.med(lambda m: m.outside) / n, 1)
        row("  a children walk would find", q.med(lambda m: m.walk_processes) / n,
            a.med(lambda m: m.walk_processes) / n, b.med(lambda m: m.walk_processes) / n, 1)
        row("controller process PSS, MB", p50([x / 1024 for x in q.controller_pss_kb]),
            p50([x / 1024 for x in a.controller_pss_kb]), p50([x / 1024 for x in b.controller_pss_kb]), 1)
    out("")
    if plan.sizes:  # not with --idle-only
        nmax = max(plan.sizes)
        kinds = sorted({k for key in (f"d{nmax}:all", f"b{nmax}") for m in res.get(key).memory for k in m.by_kind})
        out(f"PSS by process kind at N = {nmax}, MB per session (daemon N at once / launch())")
        for k in kinds:
            vals = [statistics.median(m.by_kind.get(k, 0) for m in res.get(key).clean()) / 1024 / nmax
                    for key in (f"d{nmax}:all", f"b{nmax}")]
            out(f"  {k:36}{vals[0]:>8.1f}{vals[1]:>8.1f}")
        out("")
    fn = plan.flag_n
    if plan.extras and not plan.idle_only:
        asis = res.get(f"f{fn}:as is")
        out(f"memory flags, daemon, N = {fn} at once (saving vs the daemon as is, same block)")
        out(f"  {'chromium_args':36}{'PSS MB':>9}{'saving':>9}{'anon MB':>9}{'saving':>9}{'USS MB':>9}"
            f"{'saving':>9}{'procs':>7}{'QR p50 s':>10}")
        for label in ["as is", *(lbl for lbl, _ in plan.flag_variants)]:
            c = res.get(f"f{fn}:{label}")
            cells = []
            for fn_ in (lambda m: m.pss_kb, lambda m: m.pss_anon_kb, lambda m: m.uss_kb):
                v = c.per_session_mb(fn_)
                cells.append(f"{v:>9.1f}{1 - v / asis.per_session_mb(fn_):>8.1%} ")
            out(f"  {label:36}{''.join(cells)}{c.med(lambda m: m.processes) / fn:>6.1f}{p50(c.qr):>10.2f}")
        out(f"  (no spare renderer = {NO_SPARE_RENDERER})")
        out("")
    idle = res.idle
    if idle:
        out(f"idle: {idle['n']:.0f} sessions connected for {idle['wall']:.0f} s "
            f"({idle['still_connected']:.0f} still connected at the end)")
        out(f"  daemon CPU                          {idle['daemon']:7.2%} of one core ({idle['threads']:.0f} threads)")
        out(f"  Chromium trees CPU                  {idle['chromium']:7.2%} of one core (for information)")
        out(f"  simulator CPU                       {idle['sim']:7.2%} of one core (for information)")
        out(f"  PSS per connected session           {idle['pss_mb_per_session']:7.1f} MB; daemon process "
            f"{idle['daemon_pss_mb']:.1f} MB")
        out("")
    if plan.extras:
        out(f"kill -9 of a connected session's browser ({len(res.crash_daemon)} samples), ms p50 / max")
        out(f"  daemon: watch event leaving connected   {ms(p50(res.crash_daemon)):>6} / "
            f"{ms(max(res.crash_daemon, default=math.nan)):>6}")
        out(f"  daemon: status polled every 2 ms        {ms(p50(res.crash_poll)):>6} / "
            f"{ms(max(res.crash_poll, default=math.nan)):>6}")
        out(f"  the killed process gone (pidfd)         {ms(p50(res.crash_floor)):>6} / "
            f"{ms(max(res.crash_floor, default=math.nan)):>6}")
        out(f"  launch(): pyppeteer 'disconnected' ({len(res.crash_baseline)}) {ms(p50(res.crash_baseline)):>6} / "
            f"{ms(max(res.crash_baseline, default=math.nan)):>6}")
        out("")

    out("targets")
    for n in plan.sizes:
        a, b = res.get(f"d{n}:all"), res.get(f"b{n}")
        r = a.per_session_mb(lambda m: m.pss_kb) / b.per_session_mb(lambda m: m.pss_kb)
        out(f"  PSS per session, N={n:<2}, daemon / launch()        {r:6.3f}  <= 1      {verdict(r <= 1.0)}")
    for n in plan.sizes:
        a, b = res.get(f"d{n}:all"), res.get(f"b{n}")
        r50 = p50(a.qr) / p50(b.qr)
        r95 = percentile(a.qr, 0.95) / percentile(b.qr, 0.95)
        out(f"  first QR, N={n:<2}, daemon at once / launch() p50 {r50:6.2f}  <= 1      {verdict(r50 <= 1.0)}")
        out(f"  first QR, N={n:<2}, daemon at once / launch() p95 {r95:6.2f}  <= 1      {verdict(r95 <= 1.0)}")
    worst = max(res.crash_poll + res.crash_daemon, default=math.nan)
    if plan.extras:
        out(f"  crash noticed, max of {len(res.crash_daemon)} (s)                {worst:6.3f}  < {TARGET_CRASH_S}    "
            f"{verdict(worst < TARGET_CRASH_S)}")
    if idle:
        out(f"  idle daemon, {idle['n']:.0f} sessions (of one core)         {idle['daemon']:6.2%}  < "
            f"{TARGET_IDLE_CPU:.0%}     {verdict(idle['daemon'] < TARGET_IDLE_CPU)}")
    if plan.extras:
        out("  memory flags kept by the daemon: none, so none to justify    PASS")
    out("")
    return "\n".join(lines + per_configuration(res))


def per_configuration(res: Results) -> list[str]:
    lines = ["per-configuration values"]
    for key, c in res.configs.items():
        per = " ".join(f"{m.pss_kb / 1024 / max(1, c.sessions):.1f}" for m in c.memory)
        others = " ".join(str(m.foreign) for m in c.memory)
        cold = f"; first session after start: {' '.join(f'{x:.2f}' for x in c.cold)}" if c.cold else ""
        lines.append(f"  {key:22} QR s: {' '.join(f'{x:.2f}' for x in sorted(c.qr))}; PSS MB/session: {per} "
                     f"(others' Chromium processes: {others}){cold}")
    lines.append(f"  crash ms: daemon {[round(x * 1000) for x in res.crash_daemon]}, poll "
                 f"{[round(x * 1000) for x in res.crash_poll]}, pidfd {[round(x * 1000) for x in res.crash_floor]}, "
                 f"launch() {[round(x * 1000) for x in res.crash_baseline]}")
    lines.append("cleanup: " + ("no process left behind" if not res.leftovers else
                                f"{len(res.leftovers)} processes were still running and were killed: {res.leftovers}"))
    return lines


def _revision() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__)), check=False).stdout.strip()
    except OSError:
        out = ""
    return out or "unknown"


def _mem_total_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        return math.nan


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short smoke run (< 3 min)")
    p.add_argument("--rounds", type=int, help="override the number of rounds")
    p.add_argument("--idle", type=float, help="override the idle window, seconds")
    p.add_argument("--sizes", help="override the session counts, e.g. 1,5")
    p.add_argument("--no-extras", action="store_true",
                   help="only the N rounds: no memory flags, idle window or kill -9")
    p.add_argument("--chromium", default=CHROMIUM, help=f"Chromium executable (default {CHROMIUM})")
    p.add_argument("--weight", choices=("light", "realistic"), default="light",
                   help="the simulator's logged-in app (default light); only connected sessions see a difference")
    p.add_argument("--idle-only", action="store_true",
                   help="only the idle window and kill -9 of connected sessions (no N rounds, no flags)")
    p.add_argument("--sandbox-cost", action="store_true",
                   help="only the daemon with and without Chromium's own sandbox, side by side")
    p.add_argument("--browser-user", help="with --sandbox-cost under root: the daemon's browser_user (default nobody)")
    p.add_argument("--baseline-runner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--profile-root", help=argparse.SUPPRESS)
    p.add_argument("--user-agent", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.baseline_runner:
        return baseline_runner(args)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    if args.idle:
        plan = dataclasses.replace(plan, idle_s=args.idle)
    if args.sizes:
        plan = dataclasses.replace(plan, sizes=tuple(int(x) for x in args.sizes.split(",")))
    if args.no_extras:
        plan = dataclasses.replace(plan, extras=False)
    plan = dataclasses.replace(plan, weight=args.weight)
    if args.idle_only:
        plan = dataclasses.replace(plan, idle_only=True, sizes=(), rounds=0)
    if args.sandbox_cost:
        user = args.browser_user or ("nobody" if os.geteuid() == 0 else None)
        plan = dataclasses.replace(plan, sandbox_cost=True, extras=False, browser_user=user)
    if not os.path.exists(args.chromium):
        print(f"benchmark failed: no Chromium at {args.chromium}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _interrupt)  # so that the finally blocks stop everything
    started = time.monotonic()
    try:
        res = run(plan, args.chromium)
    except (OSError, RuntimeError, WaDaemonError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1  # the figures never fail the run; a run that could not measure does
    except KeyboardInterrupt:
        return 130  # everything is already stopped and the temp directory gone
    print(report(res, plan, time.monotonic() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
