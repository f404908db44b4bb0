"""bench/cluster.py keeps running: a tiny run of it (3 hosts x 2 sessions, lease_ttl 3 s)
on a real redis-server with real daemon processes, and the figures it reports are
the ones the fleet must show (docs/performance.md, section 13)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .helpers import needs_chromium, require_tool

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TTL = 3.0


def run_bench(*args: str) -> tuple[str, dict[str, Any]]:
    """Run bench/cluster.py --quick with ``args``: its table and its RESULT line."""
    for tool, package in (("redis-server", "redis-server"), ("redis-cli", "redis-tools"),
                          ("redis-benchmark", "redis-tools")):
        require_tool(tool, package)
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cluster.py"), "--quick", "--lease-ttl", str(TTL), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
    lines = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
    assert len(lines) == 1, run.stdout
    return run.stdout, json.loads(lines[0].removeprefix("RESULT "))


def test_cluster_bench_quick_run_reports_every_figure() -> None:
    table, result = run_bench("--sessions", "2", "--idle", "2", "--churn", "6")
    assert "failover after kill -9" in table and "lease churn" in table

    # Failover: every session of the killed host came back, never before its lease could
    # have expired (the last renewal was at most one renewal period before the kill).
    [round_] = result["failover"]
    assert round_["sessions"] >= 2
    assert TTL * 0.8 - 0.1 <= round_["min"] <= round_["p50"] <= round_["max"] < TTL + 15
    churn = result["churn"]
    assert sum(churn["per_host"].values()) == 6 and len(churn["per_host"]) == 2
    assert all(n > 0 for n in churn["per_host"].values())  # both survivors took a share
    assert churn["first"] >= TTL * 0.8 - 0.1

    # Idle Redis load: the split by script found the hosts' renewals, heartbeats and scans,
    # one call each per host per renewal period (lease_ttl / 5).
    idle = result["idle"]
    per_host_min = 60 / (TTL / 5)
    sessions = idle["sessions"]
    for script in ("RENEW", "HEARTBEAT", "ORPHANS"):
        calls_per_host = idle["by_script_per_session_min"][script] * sessions / 3
        assert 0.5 * per_host_min <= calls_per_host <= 1.5 * per_host_min, (script, idle)
    assert idle["redis_commands_per_session_min"] > idle["sent_per_session_min"] > 0
    bench = result["redis_benchmark"]
    assert bench["set"] > 0 and bench["get"] > 0 and bench["renew_leases"] > 0
    assert result["projection"]["ratio_renewals"] > 0

    # Across hosts: measured, or said why not (until any-host reads and watch fan-out exist).
    for key in ("status", "watch"):
        ratio, why = result[f"{key}_ratio_p50"], result[f"{key}_not_measured"]
        assert (ratio is None) != (why is None), result
        assert ratio is None or ratio > 0


@needs_chromium
def test_cluster_bench_chromium_failover() -> None:
    table, result = run_bench("--sessions", "1", "--idle", "1", "--rounds", "0", "--churn", "0", "--chromium", "1")
    web = result["chromium"]
    assert web["sessions"] == 1 and "real Chromium on the simulator" in table
    assert TTL * 0.8 - 0.1 <= web["p50"] == web["max"] < TTL + 60
