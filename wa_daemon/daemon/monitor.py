"""What the daemon knows about its own health: event-loop lag, the state
directory, the Chromium trees of its sessions (PSS, CPU), and the health report
built from them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..protocol import Health, HealthCheck, Reason, State
from .browser.procfs import proc_files, stat_fields
from .ops.log import get_logger
from .sessions.machine import utcnow

if TYPE_CHECKING:
    from .sessions.manager import SessionManager

log = get_logger("daemon")

# Reasons that say the daemon or the machine is failing sessions, as opposed to
# a person not scanning, logging out or opening WhatsApp elsewhere.
DAEMON_FAILURES = frozenset({Reason.LAUNCH_ERROR, Reason.BROWSER_CRASHED, Reason.MAX_RECONNECTS, Reason.INTERNAL_ERROR})


class LoopMonitor:
    """Measures how late the event loop wakes a sleeping task.

    A task asks to wake every ``tick``; how much later it wakes is the lag every
    other task suffers. ``lag`` is the worst of the last ``window`` seconds. The
    watchdog asks :meth:`responsive`, which also fails when this task has not
    run for a while: a blocked loop runs no task at all, and the first task to
    run after the block must not be the watchdog reporting "alive".
    """

    def __init__(self, tick: float = 0.25, window: float = 1.0) -> None:
        self.tick = tick
        self.window = window
        self.lag = 0.0  # worst lag over the last complete window
        self._window_worst = 0.0
        self._window_start = 0.0
        self.last_tick: float | None = None

    async def run(self, on_lag: Callable[[float], None] | None = None) -> None:
        self._window_start = self.last_tick = trio.current_time()
        while True:
            asked = trio.current_time()
            await trio.sleep(self.tick)
            now = trio.current_time()
            self._window_worst = max(self._window_worst, now - asked - self.tick)
            self.last_tick = now
            if now - self._window_start >= self.window:
                self.lag = self._window_worst
                self._window_worst = 0.0
                self._window_start = now
                if on_lag is not None:
                    on_lag(self.lag)

    def responsive(self, max_lag: float) -> bool:
        if self.last_tick is None:
            return False
        silent = trio.current_time() - self.last_tick - self.tick
        return max(self.lag, self._window_worst, silent) <= max_lag


@dataclass
class GroupUsage:
    pss_bytes: int = 0
    cpu_seconds: float = 0.0  # of every process the session's browsers ever ran, never decreasing
    processes: int = 0


@dataclass
class _CpuBook:
    """CPU of the processes seen so far, so the total survives their exit."""

    live: dict[int, float] = field(default_factory=dict)
    retired: float = 0.0

    def update(self, now: dict[int, float]) -> float:
        for pid, cpu in self.live.items():
            if pid not in now:
                self.retired += cpu
        self.live = now
        return self.retired + sum(now.values())


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _read_groups(pgids: set[int]) -> dict[int, dict[int, tuple[int, float]]]:
    """{pgid: {pid: (pss bytes, cpu seconds)}} for the live processes of ``pgids``."""
    out: dict[int, dict[int, tuple[int, float]]] = {g: {} for g in pgids}
    for pid, stat in proc_files("stat"):
        fields = stat_fields(stat)
        if len(fields) < 13 or fields[0] == b"Z":
            continue
        members = out.get(int(fields[2]))
        if members is None:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime
        members[pid] = (_pss_of(pid), cpu)
    return out


def _pss_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass(frozen=True)
class DiskUsage:
    exists: bool
    writable: bool
    free_bytes: int


def disk_usage(path: Path) -> DiskUsage:
    try:
        st = os.statvfs(path)
    except OSError:
        return DiskUsage(False, False, 0)
    read_only = bool(st.f_flag & os.ST_RDONLY)
    return DiskUsage(True, not read_only and os.access(path, os.W_OK), st.f_bavail * st.f_frsize)


class ResourceSampler:
    """Samples each session's Chromium tree (by process group) and the state
    directory, in a worker thread: reading /proc for hundreds of processes
    takes milliseconds the event loop should not spend."""

    def __init__(self, state_dir: Path | None) -> None:
        self.state_dir = state_dir
        self.usage: dict[str, GroupUsage] = {}
        self.disk: DiskUsage | None = None
        self._books: dict[str, _CpuBook] = {}

    async def sample(self, groups: Mapping[str, int]) -> None:
        """``groups``: {session id: process group of its live browser}."""
        pgids = set(groups.values())
        # No thread when there is nothing to read (the scripted driver): besides
        # the cost, a worker thread lets a test's autojump clock race ahead.
        found = await trio.to_thread.run_sync(_read_groups, pgids) if pgids else {}
        if self.state_dir is not None:
            self.disk = await trio.to_thread.run_sync(disk_usage, self.state_dir)
        usage: dict[str, GroupUsage] = {}
        for session, pgid in groups.items():
            procs = found.get(pgid, {})
            book = self._books.setdefault(session, _CpuBook())
            # A relaunch brings new pids under the same book: the total keeps growing.
            cpu = book.update({pid: c for pid, (_, c) in procs.items()})
            usage[session] = GroupUsage(sum(p for p, _ in procs.values()), cpu, len(procs))
        for session, book in self._books.items():
            if session not in groups and session in self.usage:
                # Browser closed: keep its CPU total, report no memory.
                book.update({})
                usage[session] = GroupUsage(0, book.retired, 0)
        self.usage = usage

    def forget(self, sessions: set[str]) -> None:
        """Drop deleted sessions (a metric per session must not outlive it)."""
        for session in list(self._books):
            if session not in sessions:
                del self._books[session]
                self.usage.pop(session, None)


def health_report(
    *,
    loop_lag: float,
    loop_responsive: bool,
    max_lag: float,
    disk: DiskUsage | None,
    state_dir: Path | None,
    min_free: int,
    states: list[tuple[State, str | None]],
    max_failing: float,
    extra: Iterable[HealthCheck] = (),
) -> Health:
    checks = [
        HealthCheck(
            "event_loop",
            loop_responsive,
            f"lag {loop_lag * 1e3:.0f} ms" + ("" if loop_responsive else f" (limit {max_lag * 1e3:.0f} ms)"),
            loop_lag,
        )
    ]
    if state_dir is None or disk is None:
        checks.append(HealthCheck("state_dir", True, "no state directory in use (memory registry)"))
    elif not disk.exists:
        checks.append(HealthCheck("state_dir", False, f"{state_dir} does not exist"))
    elif not disk.writable:
        checks.append(HealthCheck("state_dir", False, f"{state_dir} is not writable", float(disk.free_bytes)))
    else:
        enough = disk.free_bytes >= min_free
        text = f"{disk.free_bytes / 2**20:.0f} MiB free in {state_dir}"
        checks.append(
            HealthCheck("state_dir", enough, text + ("" if enough else f" (minimum {min_free / 2**20:.0f} MiB)"),
                        float(disk.free_bytes))
        )
    failing = sum(1 for state, reason in states if state is State.FAILED and reason in DAEMON_FAILURES)
    fraction = failing / len(states) if states else 0.0
    ok = failing == 0 or fraction < max_failing
    checks.append(
        HealthCheck(
            "sessions",
            ok,
            f"{failing} of {len(states)} sessions failed by launch errors, crashes or reconnect limits"
            + ("" if ok else f" (limit {max_failing:.0%})"),
            fraction,
        )
    )
    checks.extend(extra)  # the driver's own (browser_sandbox)
    return Health(all(c.ok for c in checks), checks)


_TRANSITIONAL = (State.STARTING, State.AUTHENTICATING, State.RECONNECTING)


class _Collector(Collector):
    """The metrics read from the monitor and the sessions at scrape time."""

    def __init__(self, monitor: DaemonMonitor) -> None:
        self._monitor = monitor

    def collect(self) -> Iterable[Metric]:
        mon = self._monitor
        pss = GaugeMetricFamily(
            "wa_session_memory_pss_bytes", "Proportional set size of each session's Chromium processes",
            labels=["session"],
        )
        cpu = CounterMetricFamily(
            "wa_session_cpu_seconds", "CPU time (user + system) of each session's Chromium processes",
            labels=["session"],
        )
        procs = GaugeMetricFamily(
            "wa_session_browser_processes", "Processes in each session's Chromium tree", labels=["session"]
        )
        for session, usage in sorted(mon.resources.usage.items()):
            pss.add_metric([session], usage.pss_bytes)
            cpu.add_metric([session], usage.cpu_seconds)
            procs.add_metric([session], usage.processes)
        yield from (pss, cpu, procs)
        yield GaugeMetricFamily(
            "wa_event_loop_lag_seconds", "Worst event-loop lag over the last second", value=mon.loop.lag
        )
        yield GaugeMetricFamily(
            "wa_transitional_state_max_age_seconds",
            "How long the oldest session has been starting, authenticating or reconnecting (0: none)",
            value=mon.transitional_max_age(),
        )
        disk = mon.resources.disk
        if disk is not None:
            yield GaugeMetricFamily("wa_state_dir_free_bytes", "Free bytes in the state directory's file system",
                                    value=disk.free_bytes)
            yield GaugeMetricFamily("wa_state_dir_writable", "1 if the state directory is writable",
                                    value=1 if disk.writable else 0)


class DaemonMonitor:
    """Runs the loop monitor and the resource sampler, exposes what they
    measure as metrics, and builds the health report."""

    def __init__(
        self, manager: SessionManager, state_dir: Path | None, *, resources: ResourceSampler | None = None
    ) -> None:
        self.manager = manager
        self.loop = LoopMonitor()
        # Injectable: a test reports the memory it wants through a sampler of its own.
        self.resources = resources or ResourceSampler(state_dir)
        manager.metrics.registry.register(_Collector(self))

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.loop.run)
            while True:
                try:
                    await self.sample()
                except OSError as exc:
                    # Out of descriptors (EMFILE) and the like: skip this sample, never the daemon.
                    log.error("resource_sample_failed", error=str(exc), errno=exc.errno)
                await trio.sleep(self.manager.config.resource_sample_interval)

    async def sample(self) -> None:
        groups = self.manager.browser_groups()
        await self.resources.sample(groups)
        self.resources.forget(set(self.manager.session_ids()))
        self.enforce_memory_limit(groups)

    def enforce_memory_limit(self, groups: Mapping[str, int]) -> int:
        """Recycle the browser of each connected session whose last sample is over
        ``session_memory_limit`` (the manager takes the session's lock). Returns how
        many were recycled."""
        limit = self.manager.config.session_memory_limit
        if limit is None:
            return 0
        recycled = 0
        for sid, usage in list(self.resources.usage.items()):
            if usage.pss_bytes <= limit:
                continue
            message = f"memory limit: browser PSS {usage.pss_bytes / 2**20:.0f} MiB over {limit / 2**20:.0f} MiB"
            # The sample must be of the browser the session still has (not of one since replaced).
            if self.manager.recycle(sid, Reason.MEMORY_LIMIT, message, group=groups.get(sid)):
                recycled += 1
                log.warning("memory_limit_exceeded", session=sid, pss_bytes=usage.pss_bytes, limit=limit)
        return recycled

    def transitional_max_age(self) -> float:
        oldest = min((since for state, _, since in self.manager.states() if state in _TRANSITIONAL), default=None)
        return max(0.0, (utcnow() - oldest).total_seconds()) if oldest is not None else 0.0

    async def health(self) -> Health:
        cfg = self.manager.config
        state_dir = self.resources.state_dir
        disk = await trio.to_thread.run_sync(disk_usage, state_dir) if state_dir is not None else None
        return health_report(
            loop_lag=self.loop.lag,
            loop_responsive=self.loop.responsive(cfg.health_max_loop_lag),
            max_lag=cfg.health_max_loop_lag,
            disk=disk,
            state_dir=state_dir,
            min_free=cfg.health_min_free_bytes,
            states=[(state, reason) for state, reason, _ in self.manager.states()],
            max_failing=cfg.health_max_failing_fraction,
            extra=self.manager.driver_health_checks(),
        )
