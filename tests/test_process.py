"""The real `wa-daemon` process: blocking Client, signals, socket ownership."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from wa_daemon import Client, DaemonUnreachable, NotFound, RateLimited, State
from wa_daemon.protocol import QrUpdated, Snapshot, StateChanged

from .helpers import DaemonProcess

FAST = ["--driver", "scripted", "--set", "scripted.launch_delay=0.05", "--set", "scripted.auth_delay=0.1", "--set", "qr_debounce=0.1",
        # A second connect after a disconnect is rate limited however slowly this machine gets there.
        "--set", "connect_min_interval=3600"]


@pytest.fixture
def daemon(sock_dir: Path):  # type: ignore[no-untyped-def]
    d = DaemonProcess(sock_dir / "d.sock", *FAST)
    try:
        d.wait_ready()
        yield d
    finally:
        d.stop()


def wait_for(client: Client, sid: str, *states: str) -> None:
    with client.watch(sid, until=states, timeout=20) as events:
        for _ in events:
            pass
    assert events.end is not None and events.end.reason == "until", events.end


def test_blocking_client_every_method(daemon: DaemonProcess) -> None:
    with Client(daemon.sock, timeout=20) as wa:
        assert wa.version().driver == "scripted"
        assert wa.connect("bob").state == State.STARTING
        with wa.watch("bob", until=["connected"], timeout=20) as events:
            kinds = []
            for ev in events:
                kinds.append(type(ev))
                if isinstance(ev, StateChanged) and ev.transition.to_state == State.WAITING_QR:
                    assert wa.qr("bob").data.startswith("2@")
                    wa.simulate("bob", "refresh_qr")
                if isinstance(ev, QrUpdated):
                    wa.simulate("bob", "scan")
        assert kinds[0] is Snapshot and QrUpdated in kinds
        assert wa.status("bob").state == State.CONNECTED
        assert wa.list()[0].session == "bob"
        assert wa.history("bob", limit=2)[-1].to_state == State.CONNECTED
        assert any(s.name == "wa_sessions" for s in wa.metrics().samples)
        assert wa.disconnect("bob").state == State.STOPPED
        with pytest.raises(RateLimited):
            wa.connect("bob")
        assert wa.logout("bob").state == State.LOGGED_OUT
        wa.delete("bob")
        with pytest.raises(NotFound):
            wa.status("bob")
        assert wa.ping().server_time.tzinfo is not None


def test_blocking_client_is_thread_safe(daemon: DaemonProcess) -> None:
    errors: list[BaseException] = []
    with Client(daemon.sock, timeout=20) as wa:

        def worker(n: int) -> None:
            try:
                for _i in range(50):
                    wa.connect(f"t{n}")
                    assert wa.status(f"t{n}").session == f"t{n}"
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        # A thread still running here is stuck in the client (a deadlock on its lock):
        # daemon threads, so such a failure does not also hang the test run.
        assert not any(t.is_alive() for t in threads), "a client call never returned"
    assert errors == []


def test_unreachable_daemon_is_one_clear_error(sock_dir: Path) -> None:
    with pytest.raises(DaemonUnreachable, match="cannot reach wa-daemon"):
        Client(sock_dir / "nobody.sock").ping()


def test_sigterm_shuts_down_cleanly(sock_dir: Path) -> None:
    d = DaemonProcess(sock_dir / "d.sock", *FAST)
    d.wait_ready()
    with Client(d.sock, timeout=20) as wa:
        for i in range(5):
            wa.connect(f"s{i}")
        wait_for(wa, "s0", "waiting_qr")
        watch = wa.watch("s0")
        assert isinstance(next(watch), Snapshot)
        d.proc.send_signal(signal.SIGTERM)
        rest = list(watch)
        assert watch.end is not None and watch.end.reason == "shutdown"
        assert any(isinstance(e, StateChanged) and e.transition.to_state == State.STOPPED for e in rest)
    assert d.proc.wait(15) == 0
    assert not d.sock.exists()
    assert '"daemon_stopped"' in d.output()
    d.stop()


def test_sigint_also_shuts_down(sock_dir: Path) -> None:
    d = DaemonProcess(sock_dir / "d.sock", *FAST)
    d.wait_ready()
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(15) == 0
    d.stop()


def test_second_daemon_refuses_and_stale_socket_is_replaced(sock_dir: Path) -> None:
    sock = sock_dir / "d.sock"
    first = DaemonProcess(sock, *FAST)
    try:
        first.wait_ready()
        second = subprocess.run(
            [sys.executable, "-m", "wa_daemon.daemon.main", "--socket", str(sock)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert second.returncode == 75
        assert f"another wa-daemon (pid {first.proc.pid}) is serving" in second.stderr
        assert "Traceback" not in second.stderr
        with Client(sock) as wa:
            assert wa.ping()
        # A crash leaves the socket file behind; the next daemon replaces it.
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        assert sock.exists()
    finally:
        first.stop()
    third = DaemonProcess(sock, *FAST)
    try:
        third.wait_ready()
        with Client(sock) as wa:
            assert wa.ping()
    finally:
        assert third.stop() == 0


def test_invalid_configuration_refuses_to_start(sock_dir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "wa_daemon.daemon.main", "--socket", str(sock_dir / "x.sock"), "--set", "qr_timeout=-1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 78
    assert "qr_timeout" in out.stderr and "Traceback" not in out.stderr


def test_default_socket_path_from_environment(sock_dir: Path) -> None:
    sock = sock_dir / "env.sock"
    env = {"WA_DAEMON_SOCKET": str(sock)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wa_daemon.daemon.main", "--driver", "scripted"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.environ["WA_DAEMON_SOCKET"] = str(sock)
        try:
            with Client() as wa:  # resolves the same path as the daemon did
                assert wa.ping()
        finally:
            del os.environ["WA_DAEMON_SOCKET"]
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def test_sessions_survive_a_daemon_crash(sock_dir: Path) -> None:
    state = sock_dir / "state"
    args = (*FAST, "--state-dir", str(state))
    first = DaemonProcess(sock_dir / "d.sock", *args)
    try:
        first.wait_ready()
        with Client(first.sock, timeout=20) as wa:
            wa.connect("keep")
            wa.connect("parked")
            wait_for(wa, "parked", "waiting_qr")
            wa.disconnect("parked")
            wa.connect("gone")
            wa.delete("gone")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    finally:
        first.stop()
    assert (state / "registry.sqlite3").exists()
    second = DaemonProcess(sock_dir / "d.sock", *args)
    try:
        second.wait_ready()
        with Client(second.sock, timeout=20) as wa:
            assert [s.session for s in wa.list()] == ["keep", "parked"]
            assert wa.status("parked").state == State.STOPPED
            history = wa.history("keep")
            assert history[0].reason == "restored"
            wait_for(wa, "keep", "waiting_qr")
    finally:
        assert second.stop() == 0
