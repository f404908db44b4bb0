"""The browsers' watchdog (cluster/watchdog.py) as a real process: it kills the process
group of every browser under the sessions directory once the deadline it was told passes
without a newer one, leaves them alone while told again in time or told ``inf``, and
exits at the end of its input."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from wa_daemon.daemon.cluster.watchdog import BrowserWatchdog

from .helpers import short_tmpdir


def fake_browser(sessions: Path, sid: str) -> subprocess.Popen[bytes]:
    """A process whose command line names a session's profile, as Chromium's does, leading
    its own process group with a child, as Chromium's renderers are."""
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    return subprocess.Popen(
        [sys.executable, "-c", script, f"--user-data-dir={sessions.resolve()}/{sid}/profile"], start_new_session=True
    )


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_watchdog_kills_the_browsers_only_when_its_deadline_passes() -> None:
    with short_tmpdir() as root:
        sessions = root / "sessions"
        sessions.mkdir()
        browser = fake_browser(sessions, "s")
        bystander = fake_browser(root / "other-daemon", "s")  # another state dir's browser
        dog = BrowserWatchdog(sessions)
        try:
            time.sleep(0.5)
            assert group_alive(browser.pid)
            # told again and again in time: nothing happens
            for _ in range(8):
                dog.tell(0.5)
                time.sleep(0.2)
            dog.tell(float("inf"))
            time.sleep(0.8)
            assert browser.poll() is None
            # then silence past the deadline: the whole group dies, the other one lives
            dog.tell(0.3)
            started = time.monotonic()
            browser.wait(5)
            assert time.monotonic() - started < 2
            deadline = time.monotonic() + 5
            while group_alive(browser.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not group_alive(browser.pid)
            assert bystander.poll() is None
        finally:
            dog.close()
            for p in (browser, bystander):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        assert dog.proc.returncode == 0  # end of input: it exits by itself
