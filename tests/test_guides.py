"""The operator and client guides stay true: alert rules load and pass their unit tests,
every state and reason has its troubleshooting section, alerts use documented metrics
only, and the client examples run for real against a real daemon."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from wa_daemon import Client, ErrorCode, Reason, State

from .helpers import DaemonProcess, require_tool

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"

# The metric names the daemon exposes, as docs/operations.md documents them (the
# contract of the metrics; the daemon's registry is checked against it below).
DOCUMENTED_METRICS = {
    "wa_connect_attempts_total",
    "wa_rate_limited_total",
    "wa_qr_generated_total",
    "wa_qr_events_total",
    "wa_sessions",
    "wa_sessions_by_proxy",
    "wa_state_transitions_total",
    "wa_invalid_transitions_total",
    "wa_reconnects_total",
    "wa_inactive_cleanups_total",
    "wa_browser_crashes_total",
    "wa_browser_launches_total",
    "wa_rpc_duration_seconds",
    "wa_protocol_errors_total",
    "wa_registry_errors_total",
    "wa_messages_stored_total",
    "wa_inbox_errors_total",
    "wa_watch_subscribers",
    "wa_watch_events_dropped_total",
    "wa_rpc_connections",
    "wa_launch_queue",
    "wa_session_memory_pss_bytes",
    "wa_session_cpu_seconds_total",
    "wa_session_browser_processes",
    "wa_event_loop_lag_seconds",
    "wa_transitional_state_max_age_seconds",
    "wa_config_reloads_total",
    "wa_state_dir_free_bytes",
    "wa_state_dir_writable",
    "wa_build_info",
    "wa_limit_refusals_total",
    "wa_connections_closed_total",
    "wa_accept_failures_total",
    "wa_session_recycles_total",
    "wa_web_version_info",
    "wa_page_contract_missing",
    "wa_web_unknown_states_total",
    "wa_pairing_codes_total",
    "wa_browser_sandbox",
}
# Only with several hosts on Redis (redis_url, docs/cluster.md); tests/test_cluster.py
# checks that a daemon in a fleet exposes these on top of the ones above.
CLUSTER_METRICS = {
    "wa_cluster_leases",
    "wa_cluster_fenced_total",
    "wa_cluster_takeovers_total",
    "wa_cluster_redis_errors_total",
    "wa_cluster_pending_writes",
    "wa_cluster_limit_refusals_total",
    "wa_cluster_drained_sessions_total",
    "wa_cluster_draining",
    "wa_cluster_routed_total",
    "wa_cluster_route_seconds",
    "wa_cluster_commands_total",
    "wa_cluster_placed_total",
    "wa_cluster_events_published_total",
    "wa_cluster_events_received_total",
    "wa_cluster_events_dropped_total",
    "wa_cluster_events_refused_total",
    "wa_cluster_events_resyncs_total",
    "wa_cluster_events_lag_seconds",
    "wa_cluster_events_stale",
    "wa_cluster_remote_sessions",
    "wa_cluster_data_refused_total",
    "wa_cluster_host_id_conflicts_total",
    "wa_cluster_join_refused_total",
    "wa_cluster_reclaimed_total",
    "wa_cluster_redis_unreachable_seconds",
    "wa_cluster_auth_snapshot_bytes",
    "wa_cluster_auth_snapshot_writes_total",
    "wa_cluster_auth_snapshot_restores_total",
    "wa_cluster_auth_snapshot_failures_total",
}
# prometheus_client's process collector (the daemon process), and Prometheus' own `up`.
PROCESS_METRICS = {
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
}
SCRAPE_METRICS = {"up"}
# node_exporter's systemd collector on the daemon's host: what systemd says of the units.
HOST_METRICS = {"node_systemd_unit_state"}

_TIMEOUT = 60  # seconds: the bound of every subprocess and scenario here


# ============================================================================ promtool


def _promtool() -> str:
    return require_tool("promtool", "prometheus")


def test_alert_rules_are_valid() -> None:
    out = subprocess.run(
        [_promtool(), "check", "rules", str(DOCS / "alerts.yml")],
        capture_output=True, text=True, timeout=_TIMEOUT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_alert_rule_unit_tests_pass() -> None:
    out = subprocess.run(
        [_promtool(), "test", "rules", str(DOCS / "alerts_test.yml")],
        capture_output=True, text=True, timeout=_TIMEOUT,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# ============================================================================ alerts.yml, read as text

# No YAML library is a dependency; the rules file is written in one regular shape
# (checked here), and promtool above checks that it is valid.


def _rules() -> list[dict[str, str]]:
    text = (DOCS / "alerts.yml").read_text()
    blocks = re.split(r"\n(?=      - alert: )", text)[1:]
    rules = []
    for block in blocks:
        name = re.match(r"      - alert: (\w+)\n", block)
        assert name, block[:80]
        expr = re.search(r"\n        expr: (?:\|\n((?:          .*\n)+)|(.*)\n)", block)
        assert expr, f"{name[1]}: no expr"
        severity = re.search(r"\n          severity: (\w+)", block)
        summary = re.search(r"\n          summary: (.+)", block)
        description = re.search(r"\n          description: >-\n((?:            .*\n?)+)", block)
        rules.append({
            "alert": name[1],
            "expr": expr[1] or expr[2],
            "for": (re.search(r"\n        for: (\S+)", block) or [None, ""])[1] or "",
            "severity": severity[1] if severity else "",
            "summary": summary[1] if summary else "",
            "description": description[1] if description else "",
        })
    return rules


_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "inf", "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"\boffset\s+\w+", "", expr)
    names = set()
    for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b\s*(\()?", expr):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]?", word):
            continue
        names.add(word)
    return names


def test_the_metric_name_parser() -> None:
    expr = 'sum by (job, instance) (rate(wa_x_total{result="a b"}[5m] offset 1h)) > 0.5 * on(job) clamp_min(up, 1)'
    assert metric_names(expr) == {"wa_x_total", "up"}


def test_alerts_use_documented_metrics_only() -> None:
    known = DOCUMENTED_METRICS | CLUSTER_METRICS | PROCESS_METRICS | SCRAPE_METRICS | HOST_METRICS
    used: set[str] = set()
    for rule in _rules():
        names = {re.sub(r"_(bucket|count|sum)$", "", n) if n.startswith("wa_rpc_duration_seconds") else n
                 for n in metric_names(rule["expr"])}
        assert names, f"{rule['alert']}: no metric in {rule['expr']!r}"
        unknown = names - known
        assert not unknown, f"{rule['alert']} uses undocumented metrics {sorted(unknown)}"
        used |= names
    operations = (DOCS / "operations.md").read_text()
    missing = sorted(
        n
        for n in DOCUMENTED_METRICS | CLUSTER_METRICS | (used & (PROCESS_METRICS | HOST_METRICS))
        if f"`{n}`" not in operations
    )
    assert missing == [], f"docs/operations.md does not document {missing}"


def test_every_alert_is_complete_and_tested_both_ways() -> None:
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in rules:
        assert rule["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["summary"] and rule["description"], rule["alert"]
        assert "$labels" in rule["summary"] + rule["description"] or "absent(" in rule["expr"], rule["alert"]
    text = (DOCS / "alerts_test.yml").read_text()
    firing: set[str] = set()
    silent: set[str] = set()
    for m in re.finditer(r"alertname: (\w+)(?:\n\s*|, )exp_alerts:( \[\])?", text):
        (silent if m.group(2) else firing).add(m.group(1))
    # every alertname line is followed by its exp_alerts, so the regex saw all of them
    assert len(re.findall(r"alertname: \w+", text)) == len(re.findall(r"exp_alerts:", text))
    assert set(names) - firing == set(), "alerts never shown firing"
    assert set(names) - silent == set(), "alerts never shown silent"
    assert (firing | silent) - set(names) == set(), "tests of alerts that do not exist"
    # every alert is documented in the operator guide
    operations = (DOCS / "operations.md").read_text()
    assert [n for n in names if n not in operations] == []


# ============================================================================ troubleshooting.md


def _sections(text: str, title: str) -> dict[str, str]:
    """``### `value``` sections under the ``## title`` section: value -> body."""
    part = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert part, f"no '## {title}' section"
    found = {}
    for m in re.finditer(r"^### `([a-z_]+)`[^\n]*\n(.*?)(?=^### |\Z)", part.group(1), re.S | re.M):
        found[m.group(1)] = m.group(2)
    return found


@pytest.mark.parametrize(
    ("title", "values"),
    [
        ("States", [s.value for s in State]),
        ("Reasons", [r.value for r in Reason]),
        ("Error codes", [c.value for c in ErrorCode]),
    ],
)
def test_troubleshooting_has_a_section_per_value(title: str, values: list[str]) -> None:
    sections = _sections((DOCS / "troubleshooting.md").read_text(), title)
    assert sorted(set(values) - set(sections)) == [], f"missing sections under '## {title}'"
    assert sorted(set(sections) - set(values)) == [], f"sections for values that do not exist under '## {title}'"
    for value, body in sections.items():
        for label in ("**Means**", "**Causes**", "**Do**"):
            assert label in body, f"{title} / {value}: no {label}"


def test_troubleshooting_covers_the_common_problems() -> None:
    text = (DOCS / "troubleshooting.md").read_text()
    for needle in ("Permission denied", "/dev/shm", "75", "78", "retry_after", "limit_exceeded", "memory"):
        assert needle in text, needle


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)  # no headings in code blocks
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_guides_link_to_existing_files_and_anchors() -> None:
    ours = {"operations.md", "troubleshooting.md", "clients.md"}
    for name in sorted(ours):
        text = (DOCS / name).read_text()
        for target, anchor in re.findall(r"\]\(([^)#:\s]*)(?:#([^)\s]*))?\)", text):
            if not target and not anchor:
                continue
            path = (DOCS / (target or name)).resolve()
            if target.startswith(("http", "mailto")):
                continue
            assert path.exists(), f"{name} links to missing {target}"
            if anchor and path.name in ours | {"configuration.md", "states.md", "cli.md", "protocol.md"}:
                assert anchor in _anchors(path), f"{name} links to missing anchor {target}#{anchor}"


# ============================================================================ the examples, for real


class Lines:
    """A subprocess's merged output, read line by line by a thread, with deadlines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r} in {timeout} s:\n" + "\n".join(self.lines))
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"output ended before {pattern!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def rest(self, timeout: float = 30) -> str:
        self._thread.join(timeout)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)
        return "\n".join(self.lines)


def _env(sock: Path) -> dict[str, str]:
    return {**os.environ, "WA_DAEMON_SOCKET": str(sock), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def start_daemon(sock_dir: Path) -> Iterator[Any]:
    """Start real ``wa-daemon --driver scripted`` processes on ``<tmp>/d.sock``; all stopped at the end."""
    started: list[DaemonProcess] = []

    def start(*extra: str) -> DaemonProcess:
        d = DaemonProcess(sock_dir / "d.sock", "--driver", "scripted", *extra)
        started.append(d)
        d.wait_ready()
        return d

    try:
        yield start
    finally:
        for d in started:
            d.stop()


AUTO_SCAN = ("--set", "scripted.auto_scan_after=1.0")


@pytest.mark.slow
def test_sync_example_links_a_session(start_daemon: Any, sock_dir: Path) -> None:
    # The second run must still meet the rate limit of the first one's connect after
    # a fresh Python start, however busy the machine (it then waits the rest out):
    # 10 s, not the default 5.
    daemon = start_daemon(*AUTO_SCAN, "--set", "connect_min_interval=10")
    png = sock_dir / "qr.png"
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "sync_service.py"), "guide-sync", "--png", str(png), "--timeout", "30"],
        capture_output=True, text=True, timeout=_TIMEOUT, env=_env(daemon.sock),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "guide-sync: starting -> waiting_qr (qr_shown)" in lines
    assert any(line.startswith("QR #1 for guide-sync") for line in lines)
    assert "guide-sync: authenticating -> connected (app_loaded)" in lines
    assert lines[-1] == "guide-sync: connected"
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with Client(daemon.sock, timeout=10) as wa:
        assert wa.status("guide-sync").state == State.CONNECTED
        wa.disconnect("guide-sync")
    # A new attempt within connect_min_interval of the previous one is rate
    # limited: the example waits out retry_after and connects (saved login: no QR).
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "sync_service.py"), "guide-sync", "--timeout", "30"],
        capture_output=True, text=True, timeout=_TIMEOUT, env=_env(daemon.sock),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^rate limited, retrying in \d+\.\d s$", out.stdout, re.M), out.stdout
    assert out.stdout.splitlines()[-1] == "guide-sync: connected"


@pytest.mark.slow
def test_sync_example_reports_errors_by_type(start_daemon: Any, sock_dir: Path) -> None:
    def run(*args: str, sock: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(EXAMPLES / "sync_service.py"), *args],
            capture_output=True, text=True, timeout=_TIMEOUT, env=_env(sock),
        )

    out = run("guide", sock=sock_dir / "nobody.sock")
    assert out.returncode == 5 and "is wa-daemon running?" in out.stderr, out.stderr
    daemon = start_daemon("--set", "max_sessions=1", "--set", "qr_timeout=1", "--set", "scripted.launch_delay=0.05")
    out = run("bad id", sock=daemon.sock)
    assert out.returncode == 7, out.stderr
    out = run("first", sock=daemon.sock)  # nobody scans: failed (qr_timeout)
    assert out.returncode == 6 and "ended in failed (qr_timeout)" in out.stderr, out.stdout + out.stderr
    out = run("second", sock=daemon.sock)  # max_sessions=1
    assert out.returncode == 8 and "limit_exceeded" in out.stderr, out.stderr


@pytest.mark.slow
def test_trio_example_follows_the_session_across_daemon_restarts(start_daemon: Any, sock_dir: Path) -> None:
    sock = sock_dir / "d.sock"
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "trio_service.py"), "guide-trio", "--exit-after-connected", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(sock),
    )
    out = Lines(proc)
    try:
        # Started before the daemon: it keeps retrying.
        out.wait_for(r"^daemon unreachable \(.*\); retrying in ")
        first = start_daemon(*AUTO_SCAN)
        out.wait_for(r"^attached to wa-daemon .* \(driver scripted\)$")
        out.wait_for(r"^guide-trio: starting \(connect_requested\)$")
        out.wait_for(r"^guide-trio: QR #1 to scan")
        out.wait_for(r"^guide-trio: connected$")
        # The daemon restarts (an upgrade): the stream ends with "shutdown", the
        # service waits for the new daemon and attaches again. The scripted driver
        # keeps no registry, so the session is new there: connect starts it again.
        assert first.stop() == 0
        out.wait_for(r"^(the daemon is shutting down|connection to the daemon lost)")
        start_daemon(*AUTO_SCAN)
        out.wait_for(r"^attached to wa-daemon")
        out.wait_for(r"^guide-trio: connected$")
        assert proc.wait(timeout=_TIMEOUT) == 0, out.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "Traceback" not in out.rest()


@pytest.mark.slow
def test_trio_example_stops_on_sigterm(start_daemon: Any) -> None:
    daemon = start_daemon()  # nobody scans: the session waits for a QR scan forever
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "trio_service.py"), "guide-term"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(daemon.sock),
    )
    out = Lines(proc)
    try:
        out.wait_for(r"^guide-term: QR #1 to scan")
        proc.terminate()
        assert proc.wait(timeout=_TIMEOUT) == 0, out.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "SIGTERM: stopping" in out.rest()
    with Client(daemon.sock, timeout=10) as wa:  # the watch was cancelled, not leaked
        deadline = time.monotonic() + 10
        while _sample(wa, "wa_watch_subscribers") != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _sample(wa, "wa_watch_subscribers") == 0


def _sample(wa: Client, name: str, **labels: str) -> float:
    return sum(s.value for s in wa.metrics().samples if s.name == name and labels.items() <= s.labels.items())


def _load_fastapi_example() -> ModuleType:
    # fastapi and httpx come with the test extra: a missing one is an error, not a skip.
    spec = importlib.util.spec_from_file_location("asyncio_fastapi_example", EXAMPLES / "asyncio_fastapi.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sse(body: str) -> list[tuple[str, dict[str, Any]]]:
    import json

    events = []
    for block in body.strip().split("\n\n"):
        kind = re.search(r"^event: (.*)$", block, re.M)
        data = re.search(r"^data: (.*)$", block, re.M)
        assert kind and data, block
        events.append((kind.group(1), json.loads(data.group(1))))
    return events


@pytest.mark.slow
def test_fastapi_example_under_asyncio(start_daemon: Any) -> None:
    import httpx

    # No auto scan: the test plays the phone with `simulate`. The rate limit is far
    # longer than the scenario, however busy the machine: its last connect meets it.
    daemon = start_daemon("--set", "connect_min_interval=3600")
    module = _load_fastapi_example()
    app = module.create_app(str(daemon.sock))

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://example") as http:
                r = await http.get("/healthz")
                assert r.status_code == 200, r.text
                assert r.json()["daemon"] == "ok"

                r = await http.post("/sessions/web/connect")
                assert r.status_code == 200, r.text
                assert r.json()["state"] == "starting"

                # The QR, once the page shows one (as JSON and as a PNG).
                for _ in range(200):
                    r = await http.get("/sessions/web/qr")
                    if r.status_code == 200:
                        break
                    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
                    await asyncio.sleep(0.05)
                assert r.status_code == 200 and r.json()["seq"] == 1 and r.headers["cache-control"] == "no-store"
                png = await http.get("/sessions/web/qr.png", params={"scale": 4})
                assert png.status_code == 200 and png.headers["content-type"] == "image/png"
                assert png.content.startswith(b"\x89PNG\r\n\x1a\n")

                # Stream the state while the phone scans.
                stream = asyncio.create_task(http.get("/sessions/web/events", params={"until": "connected"}))
                with Client(daemon.sock, timeout=10) as wa:
                    while _sample(wa, "wa_watch_subscribers") < 1:
                        await asyncio.sleep(0.02)
                    wa.simulate("web", "scan")
                r = await asyncio.wait_for(stream, 30)
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                events = _sse(r.text)
                kinds = [k for k, _ in events]
                assert kinds[0] == "snapshot" and events[0][1]["status"]["state"] == "waiting_qr", events
                states = [d["transition"]["to_state"] for k, d in events if k == "state"]
                assert states == ["authenticating", "connected"], events
                assert events[-1] == ("end", events[-1][1]) and events[-1][1]["reason"] == "until"
                assert events[-1][1]["status"]["state"] == "connected"

                r = await http.get("/sessions/web")
                assert r.status_code == 200 and r.json()["state"] == "connected"

                # Daemon errors, by type, as HTTP statuses.
                r = await http.get("/sessions/web/qr")  # connected: no QR
                assert r.status_code == 404 and r.json()["error"]["details"]["state"] == "connected"
                r = await http.get("/sessions/nobody")
                assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
                r = await http.get("/sessions/nobody/events")  # the stream's error, before the response starts
                assert r.status_code == 404, r.text
                r = await http.post("/sessions/bad%20id/connect")
                assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_argument"
                r = await http.post("/sessions/web/disconnect")
                assert r.status_code == 200 and r.json()["state"] == "stopped"
                r = await http.post("/sessions/web/connect")  # within connect_min_interval
                assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
                assert 1 <= int(r.headers["retry-after"]) <= 3600

    asyncio.run(asyncio.wait_for(scenario(), _TIMEOUT))


@pytest.mark.slow
def test_fastapi_example_rides_out_a_daemon_restart(start_daemon: Any, sock_dir: Path) -> None:
    import httpx

    module = _load_fastapi_example()
    app = module.create_app(str(sock_dir / "d.sock"))

    async def health(http: Any, status: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            r = await http.get("/healthz")
            if r.status_code == status:
                return
            assert time.monotonic() < deadline, (r.status_code, r.text)
            await asyncio.sleep(0.1)

    async def scenario() -> None:
        async with app.router.lifespan_context(app):  # starts although no daemon runs yet
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://example") as http:
                r = await http.get("/sessions/x")
                assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
                daemon = await asyncio.to_thread(start_daemon)
                await health(http, 200)
                await asyncio.to_thread(daemon.stop)
                await health(http, 503)
                await asyncio.to_thread(start_daemon)
                await health(http, 200)
                r = await http.post("/sessions/again/connect")
                assert r.status_code == 200, r.text

    asyncio.run(asyncio.wait_for(scenario(), _TIMEOUT))


# ============================================================================ the daemon's registry


@pytest.mark.slow
def test_the_documented_metrics_are_the_daemons(start_daemon: Any, sock_dir: Path) -> None:
    """The daemon's registry against the list: nothing exposed is undocumented, nothing
    documented (or alerted on) is missing. With a state directory, so that the
    state-directory gauges exist too."""
    daemon = start_daemon("--state-dir", str(sock_dir / "state"))
    deadline = time.monotonic() + 10
    while True:
        with Client(daemon.sock, timeout=10) as wa:
            text = wa.metrics(prometheus=True).prometheus or ""
        exposed = {n for n in re.findall(r"^# TYPE (\w+) ", text, re.M) if not n.endswith("_created")}
        if "wa_state_dir_free_bytes" in exposed or time.monotonic() > deadline:
            break  # the first resource sample has run
        time.sleep(0.1)
    wa_exposed = {n for n in exposed if n.startswith("wa_")}
    assert sorted(wa_exposed - DOCUMENTED_METRICS) == [], "exposed but not documented"
    assert sorted(DOCUMENTED_METRICS - wa_exposed) == [], "documented but not exposed"
    alerted = set().union(*(metric_names(r["expr"]) for r in _rules())) - SCRAPE_METRICS - CLUSTER_METRICS - HOST_METRICS
    assert sorted(alerted - exposed) == [], "alerts on metrics the daemon does not expose"
