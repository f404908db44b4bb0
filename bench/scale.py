"""Scale benchmark: the daemon holding many sessions, next to the same daemon holding one.

Two parts, each a real ``wa-daemon`` process driven with ``wa_daemon.Client``:

* **scripted**: the scripted driver (no browsers) with 1 session (the baseline) and with
  ``--sessions`` (1,000) sessions, all in ``waiting_qr``, SQLite registry in a temp state
  dir. Measured on each: ``status`` latency p50/p99 (sequential calls on random ids),
  ``list`` of every session (median of 30), daemon RSS, the worst
  ``wa_event_loop_lag_seconds`` seen while measuring, and the time to restore every
  session after a restart (SIGTERM, start again, until every session is back in
  ``waiting_qr``). Ratios are against the 1-session daemon of the same run.
* **chromium**: real Chromium sessions on ``wa-daemon-sim``, added one by one (connect,
  QR, scan as the phone, ``connected``) until ``--max-chromium`` is reached, the machine's
  ``MemAvailable`` drops under ``--min-free-mib``, or a session fails to connect within 60 s.
  Measured at that size: the same figures, plus Chromium's PSS per session (every process
  of each browser's process group, ``/proc/PID/smaps_rollup``) and the time to restore
  every session to ``connected`` (without a QR) after a restart, and how much ``MemAvailable``
  fell per session added (what an estimate of sessions per machine rests on).
  ``--weights light,realistic`` runs the part once per simulator ``--weight``, one after the
  other (default ``light``); ``realistic`` is a busy account's logged-in WhatsApp Web
  (docs/simulator.md), so its figures are the ones to plan capacity with.

    python bench/scale.py             # 1,000 scripted sessions, up to 40 Chromium sessions
    python bench/scale.py --sessions 10 --max-chromium 8 --weights light,realistic   # both weights, ~5 min
    python bench/scale.py --quick     # 200 scripted, up to 6 Chromium
    python bench/scale.py --sessions 1000 --max-chromium 0   # scripted part only

A benchmark reports; it does not assert. Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wa_daemon import Client, State
from wa_daemon.daemon.browser.process import find_orphans, group_members


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, every thread, so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def wait_until(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(what)
        time.sleep(interval)
    return time.monotonic() - t0


class Daemon:
    def __init__(self, base: Path, *args: str) -> None:
        self.sock = base / "d.sock"
        self.args = args
        self.base = base
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        log = open(self.base / "daemon.log", "ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wa_daemon.daemon.main", "--socket", str(self.sock), "--log-level", "warning",
             *self.args],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(self.sock, timeout=5) as c:
                    c.ping()
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = (self.base / "daemon.log").read_text()[-2000:]
                    raise RuntimeError("daemon did not start: " + tail) from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def lag(c: Client) -> float:
    return max((s.value for s in c.metrics().samples if s.name == "wa_event_loop_lag_seconds"), default=0.0)


@dataclass
class Figures:
    label: str
    sessions: int
    status_p50_ms: float = 0.0
    status_p99_ms: float = 0.0
    list_ms: float = 0.0
    rss_mib: float = 0.0
    lag_ms: float = 0.0
    restore_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def measure(c: Client, pid: int, sids: list[str], label: str, calls: int = 2000) -> Figures:
    rng = random.Random(1)
    for _ in range(300):  # warm-up: connection, caches, allocator
        c.status(rng.choice(sids))
    worst_lag = lag(c)
    lat = []
    for i in range(calls):
        sid = rng.choice(sids)
        t0 = time.perf_counter()
        c.status(sid)
        lat.append(time.perf_counter() - t0)
        if i % 500 == 0:
            worst_lag = max(worst_lag, lag(c))
    lists = []
    for _ in range(30):
        t0 = time.perf_counter()
        c.list()
        lists.append(time.perf_counter() - t0)
    worst_lag = max(worst_lag, lag(c))
    return Figures(label, len(sids), pct(lat, 0.5) * 1e3, pct(lat, 0.99) * 1e3, statistics.median(lists) * 1e3,
                   rss_kib(pid) / 1024, worst_lag * 1e3)


def all_in(c: Client, n: int, states: set[State]) -> bool:
    listed = c.list()
    return len(listed) == n and all(s.state in states for s in listed)


def scripted_part(base: Path, n: int) -> list[Figures]:
    out = []
    for count in (1, n):
        d = base / f"scripted{count}"
        d.mkdir()
        args = ("--driver", "scripted", "--state-dir", str(d / "state"), "--set", "registry=sqlite",
                "--set", f"max_sessions={max(count, 50)}", "--set", "scripted.launch_delay=0.01",
                "--set", "max_concurrent_launches=16", "--set", "scripted.first_qr_ttl=3600")
        daemon = Daemon(d, *args)
        daemon.start()
        try:
            sids = [f"s{i:05}" for i in range(count)]
            with Client(daemon.sock, timeout=60) as c:
                rss0 = rss_kib(daemon.pid)
                for sid in sids:
                    c.connect(sid)
                wait_until(lambda c=c, n=count: all_in(c, n, {State.WAITING_QR}), 300, "sessions in waiting_qr", 0.2)
                time.sleep(1)
                fig = measure(c, daemon.pid, sids, f"scripted, {count} session{'s' if count > 1 else ''}")
                fig.extra["rss_delta_per_session_kib"] = (rss_kib(daemon.pid) - rss0) / count
            daemon.stop()
            daemon.start()
            with Client(daemon.sock, timeout=60) as c:
                wait_until(lambda c=c, n=count: all_in(c, n, {State.WAITING_QR}), 300, "restored", 0.02)
                fig.restore_s = time.monotonic() - daemon.started_at
            out.append(fig)
            progress(f"{fig}")
        finally:
            daemon.stop()
    return out


def scan(sim: str, ref: str) -> None:
    req = urllib.request.Request(sim + "/__sim__/scan", data=ref.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        json.load(resp)


def link(c: Client, sim: str, sid: str, timeout: float = 60) -> None:
    c.connect(sid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = c.status(sid).state
        if st == State.CONNECTED:
            return
        if st == State.WAITING_QR:
            try:
                scan(sim, c.qr(sid).data)
            except Exception:
                pass
        if st in (State.FAILED, State.LOGGED_OUT):
            raise RuntimeError(f"{sid} ended {st.value}: {c.status(sid).last_error}")
        time.sleep(0.2)
    raise TimeoutError(f"{sid} not connected within {timeout:g} s")


def chromium_pss_mib(state: Path) -> float:
    groups = {os.getpgid(p) for p in find_orphans(state / "sessions") if _alive(p)}
    return sum(pss_kib(pid) for g in groups for pid in group_members(g)) / 1024


def _alive(pid: int) -> bool:
    try:
        os.getpgid(pid)
        return True
    except ProcessLookupError:
        return False


# After a session connects, the realistic page builds its account (about 1.5 s of a core);
# memory is read once that is done.
BUILD_SETTLE_S = 5.0


def chromium_part(base: Path, max_sessions: int, min_free_mib: float, weight: str = "light") -> list[Figures]:
    d = base / f"chromium-{weight}"
    d.mkdir()
    sim_proc = subprocess.Popen([sys.executable, "-m", "wa_daemon.sim.main", "--port", "0", "--quiet",
                                 "--weight", weight], stdout=subprocess.PIPE, text=True)
    out: list[Figures] = []
    try:
        assert sim_proc.stdout is not None
        sim = sim_proc.stdout.readline().strip()
        state = d / "state"
        args = ("--driver", "chromium", "--state-dir", str(state), "--wa-url", sim + "/",
                "--set", f"max_sessions={max(max_sessions, 1)}", "--set", "connect_min_interval=0")
        daemon = Daemon(d, *args)
        daemon.start()
        sids: list[str] = []
        stop_reason = f"--max-chromium {max_sessions} reached"
        try:
            with Client(daemon.sock, timeout=60) as c:
                rss0 = rss_kib(daemon.pid)
                free0 = mem_available_mib()
                link(c, sim, "c000")
                sids.append("c000")
                time.sleep(BUILD_SETTLE_S)
                one = measure(c, daemon.pid, sids, f"chromium {weight}, 1 session", calls=500)
                one.extra["chromium_pss_mib_per_session"] = chromium_pss_mib(state)
                one.extra["mem_available_mib_before"] = free0
                out.append(one)
                while len(sids) < max_sessions:
                    free = mem_available_mib()
                    if free < min_free_mib:
                        stop_reason = f"MemAvailable {free:.0f} MiB < {min_free_mib:g} MiB"
                        break
                    sid = f"c{len(sids):03}"
                    t0 = time.monotonic()
                    try:
                        link(c, sim, sid)
                    except Exception as exc:
                        stop_reason = f"{sid} failed: {exc}"
                        break
                    sids.append(sid)
                    progress(f"{len(sids)} Chromium sessions connected ({time.monotonic() - t0:.1f} s; "
                             f"MemAvailable {mem_available_mib():.0f} MiB)")
                time.sleep(BUILD_SETTLE_S)
                fig = measure(c, daemon.pid, sids, f"chromium {weight}, {len(sids)} sessions", calls=1000)
                fig.extra["chromium_pss_mib_per_session"] = chromium_pss_mib(state) / len(sids)
                free1 = mem_available_mib()
                fig.extra["mem_available_mib_after"] = free1
                fig.extra["mem_available_drop_mib_per_session"] = (free0 - free1) / len(sids)
                fig.extra["daemon_cpu_s"] = cpu_seconds(daemon.pid)
                fig.extra["daemon_rss_delta_per_session_kib"] = (rss_kib(daemon.pid) - rss0) / len(sids)
                fig.extra["stopped_because"] = stop_reason
            daemon.stop()
            daemon.start()
            with Client(daemon.sock, timeout=60) as c:
                wait_until(lambda: all_in(c, len(sids), {State.CONNECTED}), 600, "restored", 0.1)
                fig.restore_s = time.monotonic() - daemon.started_at
                fig.extra["qr_after_restore"] = sum(
                    1 for sid in sids if State.WAITING_QR in [t.to_state for t in c.history(sid)])
            out.append(fig)
            progress(f"{fig}")
        finally:
            daemon.stop()
    finally:
        sim_proc.terminate()
        sim_proc.wait(10)
    return out


def report(figs: list[Figures]) -> str:
    lines = ["| daemon | sessions | status p50 | status p99 | list (all) | daemon RSS | worst loop lag | restore all |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base: dict[str, Figures] = {}
    for f in figs:
        kind = f.label.split(",")[0]
        ref = base.setdefault(kind, f)
        ratio = "" if ref is f else f" (×{f.status_p50_ms / ref.status_p50_ms:.2f})"
        lratio = "" if ref is f else f" (×{f.list_ms / ref.list_ms:.0f})"
        lines.append(f"| {f.label} | {f.sessions} | {f.status_p50_ms:.3f} ms{ratio} | {f.status_p99_ms:.3f} ms | "
                     f"{f.list_ms:.2f} ms{lratio} | {f.rss_mib:.1f} MiB | {f.lag_ms:.1f} ms | "
                     f"{f'{f.restore_s:.2f} s' if f.restore_s else '—'} |")
    lines.append("")
    for f in figs:
        if f.extra:
            lines.append(f"* {f.label}: " + ", ".join(
                f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in f.extra.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sessions", type=int, default=None, help="scripted sessions (default 1000; quick 200)")
    p.add_argument("--max-chromium", type=int, default=None, help="Chromium sessions at most (default 40; quick 6)")
    p.add_argument("--min-free-mib", type=float, default=2048)
    p.add_argument("--weights", default="light",
                   help="simulator --weight of the Chromium part, comma-separated: light, realistic (default light)")
    a = p.parse_args(argv)
    weights = [w for w in a.weights.split(",") if w]
    if not weights or not set(weights) <= {"light", "realistic"}:
        p.error("--weights takes light and/or realistic")
    n = a.sessions or (200 if a.quick else 1000)
    max_chromium = a.max_chromium if a.max_chromium is not None else (6 if a.quick else 40)
    base = Path(tempfile.mkdtemp(prefix="wa-scale-"))
    t0 = time.monotonic()
    try:
        figs = scripted_part(base, n)
        if max_chromium > 0 and os.path.exists("/usr/bin/chromium"):
            for weight in weights:
                figs += chromium_part(base, max_chromium, a.min_free_mib, weight)
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"# bench/scale.py {'--quick ' if a.quick else ''}({time.monotonic() - t0:.0f} s, {os.cpu_count()} CPUs, "
          f"MemTotal {_mem_total_gib():.1f} GiB)\n")
    print(report(figs))
    return 0


def _mem_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
