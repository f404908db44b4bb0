"""How soon a killed Chromium is noticed: the driver's BrowserGone against pyppeteer's own
`disconnected` event, in the same run, after `kill -9` of the browser process.

    python bench/loss_notice.py [--rounds 10]

Starts the simulator and, per round, one browser through ChromiumDriver.open (the
daemon's own launch path), SIGKILLs the browser process and records, from the kill,
when pyppeteer's `disconnected` fired and when the driver's first BrowserGone arrived.
Prints the medians and their ratio (driver / pyppeteer).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wa_daemon.daemon.browser.base import BrowserGone, LaunchOptions
from wa_daemon.daemon.browser.chromium import ChromiumConfig, ChromiumDriver, open_browser_loop
from wa_daemon.sim import SimEngine, SimOptions, serve_simulator


async def one_round(driver: ChromiumDriver, url: str) -> tuple[float, float, str]:
    async with driver.open(LaunchOptions("bench", url)) as browser:
        cdp_at: list[float] = []
        browser.browser.on("disconnected", lambda *_: cdp_at.append(time.perf_counter()))
        killed = time.perf_counter()
        os.kill(browser.pid, signal.SIGKILL)
        with trio.fail_after(30):
            while True:
                event = await browser.events.receive()
                if isinstance(event, BrowserGone):
                    gone = time.perf_counter()
                    break
        with trio.fail_after(30):
            while not cdp_at:
                await trio.sleep(0.001)
        return (gone - killed) * 1000, (cdp_at[0] - killed) * 1000, event.kind


async def main(rounds: int) -> None:
    engine = SimEngine(SimOptions())
    state = Path(tempfile.mkdtemp(prefix="wa-bench-"))
    async with open_browser_loop(), trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_simulator, engine.options, engine=engine)) + "/"
        driver = ChromiumDriver(ChromiumConfig(executable="/usr/bin/chromium", state_dir=state, url=url))
        driver.start()
        ours, theirs, kinds = [], [], []
        for _ in range(rounds):
            a, b, kind = await one_round(driver, url)
            ours.append(a)
            theirs.append(b)
            kinds.append(kind)
        nursery.cancel_scope.cancel()
    m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
    print(f"rounds {rounds}; first BrowserGone kinds: {sorted(set(kinds))}")
    print(f"driver BrowserGone after kill -9: median {m_ours:.1f} ms (min {min(ours):.1f}, max {max(ours):.1f})")
    print(f"pyppeteer disconnected:           median {m_theirs:.1f} ms (min {min(theirs):.1f}, max {max(theirs):.1f})")
    print(f"ratio driver/pyppeteer: {m_ours / m_theirs:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    trio.run(main, parser.parse_args().rounds)
