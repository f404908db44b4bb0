"""How close healthy pages come to the hang check's timeout: one run of the chaos test's
engine (``run_chaos`` of ``tests/test_chaos.py``: 5 real Chromium sessions, 40 s of
faults) with a given ``hang_check_timeout``, timing every hang check that answered.

Prints the chaos summary and one ``RESULT`` JSON line: hang detections per incident
fault, the false ones (where no hang or renderer kill was injected: the page was only
slow), and the answered checks' latency (p50, p99, p99.9, max). Run it on a loaded
machine to choose the test's timeout, e.g. with the other core busy:

    stress-ng --cpu 1 --timeout 3600s & for t in 3.0 1.5 1.0 0.5; do python bench/hang_check.py $t; done

The timing wraps the driver module's ``_aio`` in this process only (no product change).
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wa_daemon.daemon.browser.chromium as chromium
from tests.helpers import short_tmpdir
from tests.test_chaos import run_chaos

latencies: list[float] = []
_real_aio = chromium._aio


async def _timed_aio(fn: Any, *args: Any, **kwargs: Any) -> Any:
    if args == ("1",) and kwargs.get("force_expr"):  # the hang check's evaluate
        t0 = time.monotonic()
        result = await _real_aio(fn, *args, **kwargs)
        latencies.append(time.monotonic() - t0)
        return result
    return await _real_aio(fn, *args, **kwargs)


async def run(timeout: float, duration: float, seed: int) -> None:
    chromium._aio = _timed_aio
    with short_tmpdir() as base:
        with trio.fail_after(duration + 300):
            r = await run_chaos(base, 5, duration, seed, log=lambda s: None, hang_check_timeout=timeout)
    lat = sorted(latencies)

    def q(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else -1.0

    print(r.summary(), flush=True)
    print("RESULT " + json.dumps({
        "timeout": timeout, "seed": seed, "duration": duration, "incidents": len(r.incidents),
        "hang_detections": dict(r.hang_detections), "false_hangs": r.false_hangs,
        "unprompted": sum("unprompted" in p for p in r.problems), "problems": len(r.problems),
        "checks_answered": len(lat), "p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": q(1.0),
    }), flush=True)


def main() -> None:
    logging.disable(logging.CRITICAL)
    timeout = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    duration = float(sys.argv[2]) if len(sys.argv) > 2 else 40.0
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else random.randrange(2**32)
    trio.run(run, timeout, duration, seed)


if __name__ == "__main__":
    main()
