"""Chromium's processes seen from outside: the child's death signal, its version
and user agent, killing a process group for good, and what a killed browser
leaves behind (orphans of an earlier daemon, profile locks).

Kept apart from ``chromium`` (which speaks CDP through pyppeteer) because none
of this needs asyncio: tests, benchmarks and start-up cleanup use it alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
from pathlib import Path

import trio

from ..ops.log import get_logger
from .base import LaunchError
from .procfs import proc_files, stat_fields

log = get_logger("chromium")

_SINGLETONS = ("SingletonLock", "SingletonSocket", "SingletonCookie")
_PR_SET_PDEATHSIG = 1

# Each flag and why. Memory-saving flags are not here: see docs/performance.md.
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless",  # no display on a server
    # No --no-sandbox: Chromium's own sandbox stays on wherever it can work; sandbox.py
    # adds the flag where it cannot (root without browser_user, no user namespaces).
    "--disable-dev-shm-usage",  # /dev/shm is tiny in containers; filling it crashes renderers ("Target closed")
    "--disable-gpu",  # no GPU on servers; avoids the GPU process and its failures
    "--no-first-run",  # no first-run UI or import on a fresh profile
    "--no-default-browser-check",
    "--disable-background-networking",  # no calls home: refused on closed networks, noise otherwise
    "--disable-component-update",  # never download components at run time
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-blink-features=AutomationControlled",  # navigator.webdriver stays false, as in a normal browser
    "--disable-features=Translate,MediaRouter,OptimizationHints",  # background features a headless session never uses
    "--mute-audio",
    "--password-store=basic",  # no keyring prompts on a server
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",  # a free port, printed on stderr: no port clashes between sessions
)


def set_parent_death_signal() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def desktop_user_agent(chrome_version: str) -> str:
    """A normal desktop Chrome UA: WhatsApp refuses one that says HeadlessChrome."""
    major = chrome_version.split(".")[0] or "130"
    return (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/{major}.0.0.0 Safari/537.36"
    )


def chromium_version(executable: str) -> str:
    try:
        out = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except OSError:
        return ""
    match = re.search(r"(\d+\.\d+\.\d+\.\d+)", out)
    return match.group(1) if match else ""


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group: field 5 of /proc/PID/stat."""
    members = []
    for pid, stat in proc_files("stat"):
        fields = stat_fields(stat)
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] != b"Z":
            members.append(pid)
    return members


async def kill_group(pgid: int, timeout: float = 5.0) -> bool:
    """SIGKILL a process group and wait until none of it runs. False if some survived."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with trio.move_on_after(timeout):
        while group_members(pgid):
            await trio.sleep(0.01)
        return True
    return False


def clear_singletons(profile: Path) -> None:
    """Remove Chromium's profile locks; a lock naming another host makes Chromium refuse the profile."""
    for name in _SINGLETONS:
        with contextlib.suppress(FileNotFoundError):
            (profile / name).unlink()


def find_orphans(sessions_dir: Path) -> list[int]:
    """Pids of Chromium processes whose --user-data-dir lies under ``sessions_dir``."""
    needle = f"--user-data-dir={sessions_dir.resolve()}/".encode()
    return [pid for pid, cmdline in proc_files("cmdline") if needle in cmdline]


def kill_orphans(sessions_dir: Path) -> int:
    """Kill Chromium processes left over from a previous daemon; clear stale locks."""
    pids = find_orphans(sessions_dir)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except ProcessLookupError:
                continue
    if sessions_dir.is_dir():
        for profile in sessions_dir.glob("*/profile"):
            clear_singletons(profile)
    if pids:
        log.warning("orphans_killed", count=len(pids), pids=pids)
    return len(pids)


_DEVTOOLS_RE = re.compile(rb"DevTools listening on (ws://\S+)")


async def read_devtools_endpoint(stderr: trio.lowlevel.FdStream) -> str:
    """The DevTools endpoint a starting Chromium prints on stderr; LaunchError, with
    the last lines it printed, if it exits first."""
    buf = b""
    while True:
        chunk = await stderr.receive_some(65536)
        if not chunk:
            tail = buf.decode(errors="replace").strip().splitlines()[-5:]
            raise LaunchError("chromium exited before it was ready: " + " | ".join(tail))
        buf += chunk
        match = _DEVTOOLS_RE.search(buf)
        if match:
            return match.group(1).decode()
        buf = buf[-8192:]


async def drain_stderr(stderr: trio.lowlevel.FdStream) -> None:
    """Read and drop what Chromium says, until it closes the pipe."""
    # Chromium blocks once the pipe is full.
    try:
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError, OSError):
            while await stderr.receive_some(65536):
                pass
    finally:
        await stderr.aclose()  # closes the descriptor even when cancelled
