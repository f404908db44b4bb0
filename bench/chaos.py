"""Chaos run: real Chromium sessions on the simulator under random faults for a long time.

The engine is the one of ``tests/test_chaos.py`` (``run_chaos``): an in-process daemon
(Chromium driver, SQLite registry in a temp state dir) and simulator; every session is
linked, then each session, independently, meets one fault after another (SIGKILL of its
browser, SIGKILL of its renderers, a hung page, a conflict, a phone-offline period, a
logout from the phone, then a new link) until the time is up. Reports the faults
injected and recovered per kind, the mean recovery time, and anything lost: sessions not
back to ``connected``, incidents needing more than 3 reconnect attempts, watch streams that
differ from the histories, Chromium processes outside a live session, zombies, fds and
temp directories left behind.

    python bench/chaos.py                       # 10 sessions, 10 minutes
    python bench/chaos.py --quick               # 5 sessions, 60 s
    python bench/chaos.py --sessions 8 --minutes 3 --seed 42

A benchmark reports; the exit status is 1 only if something was lost.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import short_tmpdir
from tests.test_chaos import run_chaos


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="5 sessions for 60 s")
    p.add_argument("--sessions", type=int, default=None)
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--verbose", action="store_true", help="print every incident")
    p.add_argument("--hang-check-timeout", type=float, default=5.0,
                   help="the daemon's hang_check_timeout (the CI test uses 1.5 s with 5 sessions; "
                        "10 busy browsers on 2 cores need more)")
    a = p.parse_args(argv)
    sessions = a.sessions or (5 if a.quick else 10)
    seconds = 60 * (a.minutes if a.minutes is not None else (1 if a.quick else 10))
    seed = a.seed if a.seed is not None else random.randrange(2**32)
    # The daemon logs every RPC at info: keep the report readable.
    from wa_daemon.daemon.ops.log import configure

    configure("error", {})
    logging.getLogger().setLevel(logging.ERROR)

    def log(msg: str) -> None:
        if a.verbose or "NOT RECOVERED" in msg or "linked" in msg:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    async def run() -> int:
        with short_tmpdir() as base:
            t0 = time.monotonic()
            with trio.fail_after(seconds + 600):
                report = await run_chaos(base, sessions, seconds, seed, log=log,
                                         hang_check_timeout=a.hang_check_timeout, hang_check_interval=1.0)
            print(report.summary())
            print(f"  wall time {time.monotonic() - t0:.0f} s")
            return 1 if report.problems else 0

    print(f"bench/chaos.py: {sessions} sessions, {seconds:g} s, seed {seed}", flush=True)
    return trio.run(run)


if __name__ == "__main__":
    sys.exit(main())
