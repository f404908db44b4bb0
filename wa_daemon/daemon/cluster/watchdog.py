"""The browsers' watchdog: self-fencing that holds while the daemon itself is stopped.

A daemon paused alone (SIGSTOP of its pid, a loop stalled in a system call) leaves
its Chromium running; its ticker cannot fence, so when the lease expires another
host would start a second browser for the session. This small process, in its own
session (a signal to the daemon's process group does not reach it), is told at every
tick how long the daemon's earliest lease stays safe; when that time passes without
a newer word, it SIGKILLs the process group of every browser under the daemon's
``sessions`` directory. The deadline it is given is half a margin *after* the
daemon's own fence point, so a daemon that works always fences first and the
watchdog never acts; it acts only for a daemon that cannot.

    python -m wa_daemon.daemon.cluster.watchdog SESSIONS_DIR

reads lines of ``SECONDS`` (how long from now; ``inf`` when no lease is held) on
stdin; exits at end of input (the daemon closed it, or died, and then the parent-death
signal has taken its browsers already).
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..browser.process import find_orphans

__all__ = ["BrowserWatchdog", "main"]


class BrowserWatchdog:
    """The daemon's end: starts the watchdog and tells it the deadline."""

    def __init__(self, sessions_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wa_daemon.daemon.cluster.watchdog", str(sessions_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True, close_fds=True,
        )
        assert self.proc.stdin is not None
        self._fd = self.proc.stdin.fileno()
        os.set_blocking(self._fd, False)

    def tell(self, seconds: float) -> None:
        """The browsers may run ``seconds`` more unless told again."""
        try:
            os.write(self._fd, b"inf\n" if math.isinf(seconds) else f"{max(0.0, seconds):.3f}\n".encode())
        except (BlockingIOError, BrokenPipeError):
            pass  # it is behind (it reads the last line anyway) or gone (the daemon still fences)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # end of input: it exits
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _kill_browsers(sessions_dir: Path) -> list[int]:
    pids = find_orphans(sessions_dir)
    for pid in pids:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return pids


def main(argv: list[str]) -> int:
    sessions_dir = Path(argv[0])
    deadline = math.inf
    pending = b""
    while True:
        wait = None if math.isinf(deadline) else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([0], [], [], wait)
        if ready:
            chunk = os.read(0, 4096)
            if not chunk:
                return 0
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if lines:
                seconds = float(lines[-1])
                deadline = time.monotonic() + seconds
            continue
        if time.monotonic() >= deadline:
            pids = _kill_browsers(sessions_dir)
            line = {"event": "cluster_watchdog_killed_browsers", "level": "error", "pids": pids}
            print(json.dumps(line), file=sys.stderr, flush=True)
            deadline = math.inf  # until the daemon speaks again


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
