"""Page-side cost of the daemon's page adapter: idle connected sessions on the realistic page,
with the adapter in the page and without it, side by side in one run.

One simulator (``wa-daemon-sim --weight realistic``, a busy account's WhatsApp Web: messages
arriving every 1-5 s, typing, presence, ticking timestamps) serves three arms of ``--per-arm``
Chromium each, all running at the same time, launched alternately, so the machine's noise
falls on every arm alike:

* ``bare``: Chromium started exactly as the daemon starts it (``CHROMIUM_FLAGS``, the
  daemon's desktop user agent, its own process group and profile), driven over the DevTools
  protocol by pyppeteer, with nothing injected in the page;
* ``adapter``: the same, plus what the daemon puts in every page: its CDP binding
  (``exposeFunction``) and the adapter script (``evaluateOnNewDocument(adapter_script(...))``,
  the built-in page contract);
* ``adapter + hang check``: the same as ``adapter``, plus the daemon's one periodic call into
  a connected page, ``page.evaluate("1")`` every 10 s: what a daemon session costs the page.

Every page is linked through the simulator (its QR text from ``GET /__sim__/pages``, posted to
``/__sim__/scan``) and waits until the realistic app is built. After ``--settle`` seconds the
CPU (utime + stime of every process of each browser's process group, ``/proc/PID/stat``) is
counted over ``--window`` seconds, then PSS (``smaps_rollup``) per browser. The adapter's
reports through the binding are counted over the window too. Ratios are against ``bare``.

    python bench/page_cost.py                       # 3 browsers per arm, 120 s window, about 4 minutes
    python bench/page_cost.py --per-arm 2 --window 60   # about 2 minutes

A benchmark reports; it does not assert. This is a bench-only harness: the daemon has no
switch to leave its adapter out, and gets none.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sessions import CLK_TCK, all_procs, smaps, user_agent

from wa_daemon.daemon.browser.adapter import BINDING, adapter_script
from wa_daemon.daemon.browser.contract import load_contract
from wa_daemon.daemon.browser.process import CHROMIUM_FLAGS
from wa_daemon.daemon.browser.sandbox import NO_SANDBOX

CHROMIUM = "/usr/bin/chromium"
ARMS = ("bare", "adapter", "adapter + hang check")
HANG_CHECK_S = 10.0  # the daemon's hang_check_interval
DEVTOOLS = re.compile(r"DevTools listening on (ws://\S+)")


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Browser:
    arm: str
    proc: subprocess.Popen[bytes]
    page: Any = None
    browser: Any = None
    reports: int = 0
    ticks: list[int] = field(default_factory=list)

    @property
    def pgid(self) -> int:
        return self.proc.pid  # started with start_new_session: the group leader


def group_ticks(pgids: set[int]) -> dict[int, int]:
    out = dict.fromkeys(pgids, 0)
    for info in all_procs():
        if info.pgid in out:
            out[info.pgid] += info.ticks
    return out


def group_pss_kib(pgid: int) -> int:
    return sum(smaps(info.pid).get("pss", 0) for info in all_procs() if info.pgid == pgid)


def http_json(url: str, body: bytes | None = None) -> Any:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


async def launch(arm: str, profile: Path, ua: str, chromium: str) -> Browser:
    import pyppeteer

    # Chromium refuses its own sandbox to root: as the daemon does for root without browser_user.
    no_sandbox = (NO_SANDBOX,) if os.geteuid() == 0 else ()
    argv = [chromium, *CHROMIUM_FLAGS, *no_sandbox, f"--user-agent={ua}", f"--user-data-dir={profile}", "about:blank"]
    # Popen returns at once (fork and exec); nothing is timed while browsers start.
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,  # noqa: ASYNC220
                            start_new_session=True)
    assert proc.stderr is not None
    loop = asyncio.get_running_loop()
    endpoint = None
    while endpoint is None:
        line = await loop.run_in_executor(None, proc.stderr.readline)
        if not line:
            raise RuntimeError(f"{arm}: Chromium exited before its DevTools endpoint")
        match = DEVTOOLS.search(line.decode(errors="replace"))
        endpoint = match.group(1) if match else None
    # Keep draining stderr, or Chromium blocks on a full pipe.
    loop.run_in_executor(None, proc.stderr.read)
    b = Browser(arm, proc)
    b.browser = await pyppeteer.connect(browserWSEndpoint=endpoint)
    b.page = (await b.browser.pages())[0]
    await b.page.setUserAgent(ua)
    if arm != "bare":
        def report(_snapshot: Any, b: Browser = b) -> None:
            b.reports += 1

        await b.page.exposeFunction(BINDING, report)
        await b.page.evaluateOnNewDocument(adapter_script(load_contract(None)))
    return b


async def hang_check(b: Browser, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), HANG_CHECK_S)
        except asyncio.TimeoutError:
            await b.page.evaluate("1")


async def link_all(sim: str, browsers: list[Browser], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    scanned: set[str] = set()
    while True:
        pages = http_json(sim + "/__sim__/pages")
        linked = sum(1 for p in pages if p["screen"] == "app")
        if linked >= len(browsers):
            break
        for p in pages:
            if p["screen"] == "qr" and p["ref"] and p["id"] not in scanned:
                http_json(sim + "/__sim__/scan", p["ref"].encode())
                scanned.add(p["id"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {linked} of {len(browsers)} pages reached the app")
        await asyncio.sleep(0.2)
    for b in browsers:
        await b.page.waitForFunction("require('__debug').simApp.built", {"timeout": 60000})


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    sim_proc = subprocess.Popen([sys.executable, "-m", "wa_daemon.sim.main", "--port", "0", "--quiet",  # noqa: ASYNC220
                                 "--weight", "realistic"], stdout=subprocess.PIPE, text=True)
    browsers: list[Browser] = []
    try:
        assert sim_proc.stdout is not None
        sim = sim_proc.stdout.readline().strip()
        ua = user_agent(args.chromium)
        for i in range(args.per_arm):
            for arm in ARMS:
                b = await launch(arm, tmp / f"{ARMS.index(arm)}-{i}", ua, args.chromium)
                browsers.append(b)
                await b.page.goto(sim + "/")
        progress(f"{len(browsers)} browsers open; linking")
        await link_all(sim, browsers)
        progress(f"all linked and built; settling {args.settle:g} s")
        stop = asyncio.Event()
        checks = [asyncio.ensure_future(hang_check(b, stop)) for b in browsers if b.arm == ARMS[2]]
        await asyncio.sleep(args.settle)
        pgids = {b.pgid for b in browsers}
        load0 = os.getloadavg()
        reports0 = {id(b): b.reports for b in browsers}
        arrived0 = [await b.page.evaluate("require('__debug').simApp.arrived") for b in browsers]
        t0, start = time.monotonic(), group_ticks(pgids)
        progress(f"counting CPU for {args.window:g} s")
        await asyncio.sleep(args.window)
        end, elapsed = group_ticks(pgids), time.monotonic() - t0
        load1 = os.getloadavg()
        arrived1 = [await b.page.evaluate("require('__debug').simApp.arrived") for b in browsers]
        stop.set()
        await asyncio.gather(*checks)
        out: dict[str, Any] = {"window_s": elapsed, "load": (load0, load1), "arms": {}}
        for arm in ARMS:
            mine = [b for b in browsers if b.arm == arm]
            cpu = [(end[b.pgid] - start[b.pgid]) / CLK_TCK for b in mine]
            out["arms"][arm] = {
                "cpu_s": cpu,
                "pss_mib": [group_pss_kib(b.pgid) / 1024 for b in mine],
                "reports": sum(b.reports - reports0[id(b)] for b in mine),
                "reports_all": sum(b.reports for b in mine),
                "arrived": sum(a1 - a0 for b, a0, a1 in zip(browsers, arrived0, arrived1, strict=True) if b.arm == arm),
                "heap_mib": [await b.page.evaluate("performance.memory.usedJSHeapSize") / 2**20 for b in mine],
            }
        return out
    finally:
        for b in browsers:
            try:
                os.killpg(b.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            b.proc.wait()
        sim_proc.terminate()
        sim_proc.wait(10)


def report(res: dict[str, Any], args: argparse.Namespace) -> str:
    w = res["window_s"]
    lines = [f"# bench/page_cost.py --per-arm {args.per_arm} --window {args.window:g} "
             f"({os.cpu_count()} CPUs; load average {res['load'][0][0]:.2f} before, {res['load'][1][0]:.2f} after)",
             "",
             "| arm | browsers | CPU per browser, % of one core (mean; min-max) | vs bare | PSS per browser | "
             "used JS heap | adapter reports (window / all) | messages arrived |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    bare = sum(res["arms"][ARMS[0]]["cpu_s"]) / len(res["arms"][ARMS[0]]["cpu_s"])
    for arm in ARMS:
        a = res["arms"][arm]
        cpu = a["cpu_s"]
        mean = sum(cpu) / len(cpu)
        lines.append(f"| {arm} | {len(cpu)} | {100 * mean / w:.2f}% ({100 * min(cpu) / w:.2f}-{100 * max(cpu) / w:.2f}) | "
                     f"{mean / bare:.2f}x | {sum(a['pss_mib']) / len(cpu):.0f} MiB | "
                     f"{sum(a['heap_mib']) / len(cpu):.0f} MiB | {a['reports']} / {a['reports_all']} | {a['arrived']} |")
    lines.append("")
    lines.append(f"window {w:.1f} s; CPU = utime + stime of every process of each browser's group")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-arm", type=int, default=3, help="browsers per arm (default %(default)s)")
    p.add_argument("--window", type=float, default=120.0, help="seconds of CPU counting (default %(default)s)")
    p.add_argument("--settle", type=float, default=15.0, help="seconds after the last build (default %(default)s)")
    p.add_argument("--chromium", default=CHROMIUM)
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="wa-page-cost-"))
    t0 = time.monotonic()
    try:
        res = asyncio.run(run(args, tmp))
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(report(res, args))
    print(f"\n({time.monotonic() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
