"""The daemon's side of systemd: sd_notify on a real datagram socket, the
watchdog's liveness check, socket activation through Debian's
systemd-socket-activate, reload by SIGHUP, the /metrics listener and health."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import trio

from wa_daemon import Client, LimitExceeded
from wa_daemon.daemon.app import Daemon
from wa_daemon.daemon.ops.systemd import Notifier, listen_fds

from .helpers import DaemonProcess, make_config, require_tool


class NotifyListener:
    """A datagram socket standing in for systemd's notification socket.
    Messages are time-stamped when read: read often (``drain``) or in a
    thread (``collect``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, list[str]]] = []

    def drain(self, timeout: float = 0.0) -> list[list[str]]:
        """Messages that arrived, waiting up to ``timeout`` for the first one."""
        got: list[list[str]] = []
        self.sock.settimeout(timeout if timeout > 0 else 0.0)  # 0.0: non-blocking
        while True:
            try:
                data = self.sock.recv(4096)
            except (BlockingIOError, TimeoutError):
                return got
            lines = data.decode().split("\n")
            self.messages.append((time.monotonic(), lines))
            got.append(lines)
            self.sock.setblocking(False)

    def wait_for(self, line: str, timeout: float = 20) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.drain(0.2):
                if any(item == line or item.startswith(line) for item in message):
                    return message
        raise AssertionError(f"no {line!r} in {[m for _, m in self.messages]}")

    def collect(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.drain(0.02)

    def close(self) -> None:
        self.sock.close()


@contextmanager
def notify_socket(tmp: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp / "notify.sock")
    try:
        yield listener
    finally:
        listener.close()


def test_notify_lifecycle_of_a_real_daemon(sock_dir: Path) -> None:
    with notify_socket(sock_dir) as systemd:
        d = DaemonProcess(
            sock_dir / "d.sock", "--driver", "scripted",
            env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "400000"},
        )
        try:
            ready = systemd.wait_for("READY=1")
            assert "STATUS=0 sessions" in ready
            assert systemd.wait_for("WATCHDOG=1") == ["WATCHDOG=1"]
            with Client(d.sock, timeout=10) as wa:
                wa.connect("a")
                assert systemd.wait_for("STATUS=1 session: 1 waiting_qr")
                d.proc.send_signal(signal.SIGHUP)
                reloading = systemd.wait_for("RELOADING=1")
                assert re.fullmatch(r"MONOTONIC_USEC=\d+", reloading[1])
                assert "STATUS=1 session: 1 waiting_qr" in systemd.wait_for("READY=1")
                # The pings go on after the reload (waited for: how many fit in the steps
                # above depends on the machine's speed).
                assert systemd.wait_for("WATCHDOG=1") == ["WATCHDOG=1"]
            d.proc.send_signal(signal.SIGTERM)
            systemd.wait_for("STOPPING=1")
            assert d.proc.wait(30) == 0, d.output()
        finally:
            d.stop()


def test_no_notify_socket_means_no_notifications() -> None:
    env = {"WATCHDOG_USEC": "1000", "OTHER": "x"}
    notifier = Notifier(env)
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert notifier.notify("READY=1") is False
    assert env == {"OTHER": "x"}  # read once and removed, so Chromium does not inherit them


def test_notify_variables_for_another_process_are_ignored(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(env).watchdog_interval is None
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert listen_fds(env) == [] and env == {}


async def test_watchdog_withheld_while_the_event_loop_is_blocked(sock_dir: Path) -> None:
    """A bare timer would ping as soon as the loop unblocks; ours must not."""
    with notify_socket(sock_dir) as systemd:
        env = {"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "200000"}  # ping every 0.1 s
        daemon = Daemon(make_config(socket_path=str(sock_dir / "d.sock")), notifier=Notifier(env),
                        rng=random.Random(1))
        # The daemon runs in this trio loop and the socket is read here, between its
        # steps: a ping is read no earlier than it was sent, and none can be sent while
        # the test holds the loop.
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(daemon.run)
                while _pings(systemd) < 5:  # healthy: pings flow
                    await trio.sleep(0.01)
                _pings(systemd)  # everything sent before the block is read before it
                before = systemd.messages[:]
                time.sleep(1.2)  # noqa: ASYNC251 - the point: the whole loop stops, as a hung call would stop it
                unblocked_at = time.monotonic()
                # Nothing right after the block either: the first ping only once the
                # loop has shown a lag-free window again.
                while _pings(systemd) == len([m for _, m in before if m == ["WATCHDOG=1"]]):
                    await trio.sleep(0.01)
                daemon.request_stop()
        first_after = next(t for t, m in systemd.messages[len(before):] if m == ["WATCHDOG=1"])
        assert first_after - unblocked_at >= 0.5, (first_after - unblocked_at)


def _pings(systemd: NotifyListener) -> int:
    """The watchdog pings read so far, reading what has arrived."""
    systemd.drain()
    return sum(1 for _, m in systemd.messages if m == ["WATCHDOG=1"])


# ---------------------------------------------------------------------------- socket activation


def _activator() -> str:
    return require_tool("systemd-socket-activate", "systemd")


def test_socket_activation_serves_the_passed_socket_and_leaves_it(sock_dir: Path) -> None:
    path = sock_dir / "act.sock"
    log = open(sock_dir / "daemon.log", "wb")
    proc = subprocess.Popen(
        [_activator(), "-l", str(path), sys.executable, "-m", "wa_daemon.daemon.main", "--driver", "scripted",
         "--socket", str(sock_dir / "ignored.sock")],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while not path.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        inode = path.stat().st_ino
        # The first client connects before the daemon exists (the activator starts
        # it on this connection) and is served from the backlog.
        with Client(path, timeout=30) as wa:
            assert wa.connect("s1").session == "s1"
            assert wa.version().driver == "scripted"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        output = (sock_dir / "daemon.log").read_text()
        assert '"socket_activated": true' in output or '"socket_activated":true' in output, output
        # systemd owns the path: the daemon neither unlinked it nor made its own socket or lock.
        assert path.exists() and path.stat().st_ino == inode
        assert not (sock_dir / "ignored.sock").exists() and not (sock_dir / "ignored.sock.lock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()


def test_socket_activation_refuses_a_socket_of_the_wrong_type(sock_dir: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [_activator(), "-l", f"127.0.0.1:{port}", sys.executable, "-m", "wa_daemon.daemon.main",
         "--driver", "scripted"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:  # the activator execs the daemon on the first connection
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 78
        assert b"expected a Unix stream socket" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


# ---------------------------------------------------------------------------- reload


def _wait_log(d: DaemonProcess, event: str, count: int = 1, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while d.output().count(f'"event":"{event}"') < count:
        assert time.monotonic() < deadline, f"no {event} in\n{d.output()[-3000:]}"
        time.sleep(0.05)


def test_sighup_reloads_limits_and_levels_without_dropping_a_session(sock_dir: Path) -> None:
    config = sock_dir / "config.toml"
    config.write_text('max_sessions = 1\n[log_levels]\nserver = "warning"\n')
    d = DaemonProcess(sock_dir / "d.sock", "--config", str(config), "--driver", "scripted")
    try:
        d.wait_ready()
        with Client(d.sock, timeout=10) as wa:
            wa.connect("a")
            with pytest.raises(LimitExceeded):
                wa.connect("b")
            assert '"event":"rpc"' not in d.output()  # the server component logs at warning

            config.write_text("max_sessions = 3\n")
            d.proc.send_signal(signal.SIGHUP)
            _wait_log(d, "config_reloaded")
            assert wa.connect("b").session == "b"
            # untouched by the reload: still on its way, never stopped
            assert wa.status("a").state.value in ("starting", "waiting_qr")
            assert [t.to_state.value for t in wa.history("a")] in (["starting"], ["starting", "waiting_qr"])
            wa.ping()
            _wait_log(d, "rpc")  # back to info for the server

            config.write_text("max_sessions = 'lots'\n")
            d.proc.send_signal(signal.SIGHUP)
            _wait_log(d, "config_reload_failed")
            assert "line 1: key 'max_sessions'" in d.output()
            wa.connect("c")
            with pytest.raises(LimitExceeded):  # still 3: the bad file changed nothing
                wa.connect("d")

            config.write_text('max_sessions = 3\nchromium_path = "/opt/elsewhere/chromium"\n')
            d.proc.send_signal(signal.SIGHUP)
            _wait_log(d, "config_needs_restart")
            assert wa.version().driver == "scripted"
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in wa.metrics().samples}
            assert samples[("wa_config_reloads_total", (("result", "ok"),))] == 2
            assert samples[("wa_config_reloads_total", (("result", "error"),))] == 1
            assert len(wa.list()) == 3
    finally:
        assert d.stop() == 0, d.output()


# ---------------------------------------------------------------------------- metrics listener, health


def test_metrics_http_listener(sock_dir: Path) -> None:
    d = DaemonProcess(sock_dir / "d.sock", "--driver", "scripted", "--set", "metrics_listen=127.0.0.1:0")
    try:
        d.wait_ready()
        _wait_log(d, "metrics_listening")
        line = next(ln for ln in d.output().splitlines() if '"metrics_listening"' in ln)
        address = json.loads(line)["addresses"][0]
        with Client(d.sock, timeout=10) as wa:
            wa.connect("m1")
        with httpx.Client(base_url=f"http://{address}", timeout=10) as http:
            r = http.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert re.search(r'^wa_sessions\{state="(starting|waiting_qr)"\} 1\.0$', r.text, re.M)
            assert "wa_event_loop_lag_seconds " in r.text and "process_resident_memory_bytes " in r.text
            assert 'wa_connect_attempts_total{result="started"} 1.0' in r.text
            health = http.get("/health")
            assert health.status_code == 200 and health.json()["healthy"] is True
            assert http.head("/metrics").content == b""
            assert http.get("/nope").status_code == 404
            assert http.post("/metrics").status_code == 405
            assert http.get("/metrics", headers={"X-Big": "x" * 10000}).status_code == 431
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"garbage\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 400")
        with Client(d.sock, timeout=10) as wa:
            assert wa.ping()  # the RPC side never noticed
    finally:
        assert d.stop() == 0, d.output()


def test_wactl_health(sock_dir: Path) -> None:
    state = sock_dir / "state"
    d = DaemonProcess(sock_dir / "d.sock", "--driver", "scripted", "--state-dir", str(state))
    try:
        d.wait_ready()

        def wactl(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "wactl.main", "--socket", str(d.sock), *args],
                capture_output=True, text=True, timeout=30,
            )

        ok = wactl("health")
        assert ok.returncode == 0, ok
        assert "ok   event_loop" in ok.stdout and f"free in {state}" in ok.stdout and ok.stdout.endswith("healthy\n")
        report = json.loads(wactl("health", "--json").stdout)
        assert report["healthy"] is True and [c["name"] for c in report["checks"]] == [
            "event_loop", "state_dir", "sessions"]
    finally:
        assert d.stop() == 0
    # The same state directory with a free-space floor no disk meets: unhealthy, exit 9.
    d = DaemonProcess(sock_dir / "d.sock", "--driver", "scripted", "--state-dir", str(state),
                      "--set", f"health_min_free_bytes={1 << 62}")
    try:
        d.wait_ready()
        bad = subprocess.run([sys.executable, "-m", "wactl.main", "--socket", str(d.sock), "health"],
                             capture_output=True, text=True, timeout=30)
        assert bad.returncode == 9, bad
        assert "FAIL state_dir" in bad.stdout and "unhealthy: state_dir:" in bad.stderr
    finally:
        assert d.stop() == 0
    unreachable = subprocess.run([sys.executable, "-m", "wactl.main", "--socket", str(d.sock), "health"],
                                 capture_output=True, text=True, timeout=30)
    assert unreachable.returncode == 5
