"""wactl end to end: a real wa-daemon subprocess (scripted driver), wactl run as a subprocess.

The daemon helpers at the top (:class:`DaemonProcess`, :func:`running_daemon`,
the ``daemon_factory`` fixture) are meant for reuse by other process-level tests.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from wa_daemon import Client, __version__
from wa_daemon.errors import (
    Busy,
    ConnectionLost,
    DaemonUnreachable,
    InternalError,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    RateLimited,
    Unavailable,
    WaDaemonError,
)
from wa_daemon.protocol import (
    End,
    QrCode,
    QrUpdated,
    SessionError,
    SessionStatus,
    Snapshot,
    State,
    StateChanged,
    Transition,
)
from wactl import exits, render
from wactl.parser import build_parser

from .helpers import require, require_tool

pytestmark = pytest.mark.slow

WACTL = [sys.executable, "-m", "wactl"]
# The same command for a process the test will interrupt: a runner started in the
# background may ignore SIGINT, Python keeps an inherited SIG_IGN, and wactl would
# then never see Ctrl-C.
WACTL_INTERRUPTIBLE = [
    sys.executable,
    "-c",
    (
        "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "runpy.run_module('wactl', run_name='__main__', alter_sys=True)"
    ),
]
RUN_TIMEOUT = 30.0

# Fast enough for tests, slow enough that every phase is observable.
FAST = {
    "scripted.launch_delay": "0.05",
    "scripted.auth_delay": "0.1",
    "qr_debounce": "0.2",
    "watch_qr_interval": "0",
}

QR_MARKS = ("█", "▀", "▄", "\x1b[7m")  # half blocks, or the ANSI fallback


# ============================================================================ daemon helpers


class DaemonProcess:
    """A wa-daemon subprocess serving ``socket``; ``log`` holds its output."""

    def __init__(self, proc: subprocess.Popen[bytes], socket: Path, log: Path) -> None:
        self.proc = proc
        self.socket = socket
        self.log = log

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["WA_DAEMON_SOCKET"] = str(self.socket)
        env.update(extra)
        return env

    def wactl(self, *args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run wactl against this daemon (through $WA_DAEMON_SOCKET)."""
        return run_wactl(*args, env=self.env(), timeout=timeout)

    def wactl_json(self, *args: str) -> Any:
        result = self.wactl(*args, "--json")
        assert result.returncode == 0, result
        return json.loads(result.stdout)

    def popen_wactl(self, *args: str) -> subprocess.Popen[str]:
        return popen_wactl(*args, env=self.env())

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        return self.proc.returncode


def _wait_for_ping(daemon: DaemonProcess, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if daemon.proc.poll() is not None:
            raise RuntimeError(
                f"wa-daemon exited with {daemon.proc.returncode}:\n{daemon.log.read_text()}"
            )
        try:
            with Client(daemon.socket, timeout=2.0) as client:
                client.ping()
            return
        except (WaDaemonError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"wa-daemon did not answer within {timeout} s:\n{daemon.log.read_text()}"
                ) from None
            time.sleep(0.05)


@contextmanager
def running_daemon(
    directory: Path, settings: Mapping[str, str] | None = None
) -> Iterator[DaemonProcess]:
    """Start a wa-daemon (scripted driver) logging to ``directory``; stop it on exit.

    The socket gets a short directory of its own under /tmp: a Unix socket path
    must fit in 108 bytes, which a deep pytest tmp_path may not.
    """
    sock_dir = Path(
        tempfile.mkdtemp(prefix="wactl-", dir="/tmp" if os.path.isdir("/tmp") else None)
    )
    sock = sock_dir / "d.sock"
    log = directory / "daemon.log"
    cmd = [
        sys.executable,
        "-m",
        "wa_daemon.daemon.main",
        "--socket",
        str(sock),
        "--state-dir",
        str(directory),
        "--driver",
        "scripted",
    ]
    for key, value in {**FAST, **(settings or {})}.items():
        cmd += ["--set", f"{key}={value}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    daemon = DaemonProcess(proc, sock, log)
    try:
        _wait_for_ping(daemon)
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.fixture
def daemon_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., DaemonProcess]]:
    """``daemon_factory(**settings)`` starts a daemon for this test, e.g.
    ``daemon_factory(**{"scripted.fail_launch": "true"})``; all stop at teardown."""
    stack: list[Any] = []

    def start(**settings: str) -> DaemonProcess:
        cm = running_daemon(tmp_path_factory.mktemp("wad"), settings)
        daemon = cm.__enter__()
        stack.append(cm)
        return daemon

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@pytest.fixture(scope="module")
def auto_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """Every page scans its own first QR 1.2 s after showing it."""
    with running_daemon(
        tmp_path_factory.mktemp("auto"), {"scripted.auto_scan_after": "1.2"}
    ) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def manual_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """Pages wait for `simulate ID scan`; QR codes live 60 s."""
    with running_daemon(tmp_path_factory.mktemp("manual")) as daemon:
        yield daemon


# ============================================================================ wactl helpers


def run_wactl(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WACTL, *args],
        check=False,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )


def popen_wactl(*args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*WACTL_INTERRUPTIBLE, *args],
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        errors="replace",
    )


def read_line(proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output in time"
    return proc.stdout.readline()


def finish(proc: subprocess.Popen[str], timeout: float = RUN_TIMEOUT) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=timeout)
        raise AssertionError(f"wactl did not end: {out!r} {err!r}") from None
    return proc.returncode, out, err


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def has_qr(text: str) -> bool:
    return any(mark in text for mark in QR_MARKS)


def assert_one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def wait_state(daemon: DaemonProcess, session: str, state: str, timeout: float = 10) -> None:
    result = daemon.wactl("watch", session, "--until", state, "--timeout", str(timeout))
    assert result.returncode == 0, result


def connect_waiting(daemon: DaemonProcess, session: str) -> None:
    """Start ``session`` and return once it shows a QR."""
    assert daemon.wactl("connect", session, "--no-wait").returncode == 0
    wait_state(daemon, session, "waiting_qr")


# ============================================================================ connect


def test_connect_waits_until_connected_and_shows_the_qr(auto_daemon: DaemonProcess) -> None:
    result = auto_daemon.wactl("connect", "alice")
    assert result.returncode == exits.EXIT_OK, result
    assert has_qr(result.stdout)
    assert "QR #1 for alice, expires " in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("alice: ")]
    assert lines[0].startswith("alice: starting")
    assert lines[-1] == "alice: connected (app_loaded)"
    assert "alice: authenticating (qr_scanned)" in lines
    assert result.stderr == ""
    assert auto_daemon.wactl_json("status", "alice")["state"] == "connected"


def test_connect_when_connected_returns_at_once(auto_daemon: DaemonProcess) -> None:
    assert auto_daemon.wactl("connect", "already").returncode == 0
    # "At once": one line and no wait for anything; a wait that never ends would hit
    # the subprocess timeout. (How fast a Python process starts is not checked here.)
    result = auto_daemon.wactl("connect", "already")
    assert result.returncode == 0, result
    assert result.stdout.strip() == "already: connected (app_loaded)"


def test_connect_json_prints_one_object_per_event(auto_daemon: DaemonProcess) -> None:
    result = auto_daemon.wactl("--json", "connect", "jason")
    assert result.returncode == 0, result
    docs = json_lines(result.stdout)
    types = [d["type"] for d in docs]
    assert types[0] == "connect" and types[1] == "snapshot" and types[-1] == "end"
    assert docs[0]["status"]["session"] == "jason"
    qrs = [d["qr"] for d in docs if d["type"] == "qr"]
    qrs += [d["status"]["qr"] for d in docs if d["type"] in ("snapshot", "state") and d["status"].get("qr")]
    qr = qrs[0]
    assert qr["data"].startswith("2@") and qr["seq"] == 1
    moves = [
        (d["transition"]["from_state"], d["transition"]["to_state"])
        for d in docs
        if d["type"] == "state"
    ]
    assert moves[-1] == ("authenticating", "connected")
    assert docs[-1]["reason"] == "until"
    assert docs[-1]["status"]["state"] == "connected"
    assert not has_qr(result.stdout)


def test_connect_no_wait(manual_daemon: DaemonProcess) -> None:
    result = manual_daemon.wactl("connect", "nowait", "--no-wait")
    assert result.returncode == 0, result
    header, row = result.stdout.splitlines()
    assert header.split() == ["SESSION", "STATE", "SINCE", "ATTEMPT", "REASON", "LAST_ERROR"]
    assert row.split()[:2] == ["nowait", "starting"]
    assert "connect_requested" in row

    result = manual_daemon.wactl("connect", "nowait2", "--no-wait", "--json")
    assert result.returncode == 0, result
    status = json.loads(result.stdout)
    assert status["session"] == "nowait2"
    assert status["state"] == "starting"
    assert status["reason"] == "connect_requested"


def test_connect_png_is_written(auto_daemon: DaemonProcess, tmp_path: Path) -> None:
    png = tmp_path / "qr.png"
    result = auto_daemon.wactl("connect", "pngsession", "--png", str(png), "--scale", "4")
    assert result.returncode == 0, result
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert f"Saved to {png}" in result.stdout
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic replace left nothing behind


def test_connect_png_is_replaced_on_each_refresh(
    daemon_factory: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = daemon_factory(
        **{"scripted.first_qr_ttl": "0.6", "scripted.qr_ttl": "0.6", "qr_timeout": "2"}
    )
    png = tmp_path / "qr.png"
    result = daemon.wactl("connect", "refresh", "--png", str(png))
    assert result.returncode == exits.EXIT_SESSION_FAILED, result
    captions = [line for line in result.stdout.splitlines() if line.startswith("QR #")]
    # Not a TTY: each QR is printed below the previous one.
    assert len(captions) >= 2
    assert captions[0].startswith("QR #1 ") and captions[1].startswith("QR #2 ")
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "qr_timeout" in result.stderr

    # The file holds the latest QR, not the first: compare with PNGs of the QRs shown.
    result = daemon.wactl("--json", "connect", "refresh2", "--png", str(png), "--scale", "3")
    assert result.returncode == exits.EXIT_SESSION_FAILED, result
    shown: list[str] = []
    for doc in json_lines(result.stdout):
        qr = doc.get("qr") if doc["type"] == "qr" else (doc.get("status") or {}).get("qr")
        if qr and qr["data"] not in shown:
            shown.append(qr["data"])
    assert len(shown) >= 2, shown

    def png_of(data: str) -> bytes:
        path = tmp_path / "expected.png"
        render.save_png(data, path, scale=3)
        return path.read_bytes()

    assert png.read_bytes() == png_of(shown[-1]) != png_of(shown[0])


def test_connect_failure_exits_6_with_the_reason(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    daemon = daemon_factory(**{"scripted.fail_launch": "true"})
    result = daemon.wactl("connect", "doomed")
    assert result.returncode == exits.EXIT_SESSION_FAILED, result
    line = assert_one_error_line(result.stderr)
    assert line.startswith("wactl: launch_error: session 'doomed' failed")
    assert "doomed: failed (launch_error)" in result.stdout

    status = daemon.wactl_json("status", "doomed")
    assert status["state"] == "failed"
    assert status["reason"] == "launch_error"

    # A fresh attempt is rate limited for 5 s; another session shows the JSON form.
    result = daemon.wactl("connect", "doomed2", "--json")
    assert result.returncode == exits.EXIT_SESSION_FAILED, result
    error = json.loads(assert_one_error_line(result.stderr))["error"]
    assert error["code"] == "launch_error"
    assert error["details"]["state"] == "failed"
    assert error["details"]["session"] == "doomed2"
    assert json_lines(result.stdout)[-1]["status"]["state"] == "failed"


def test_connect_timeout_exits_6(manual_daemon: DaemonProcess) -> None:
    result = manual_daemon.wactl("connect", "slowpoke", "--timeout", "0.5")
    assert result.returncode == exits.EXIT_SESSION_FAILED, result
    line = assert_one_error_line(result.stderr)
    assert line.startswith("wactl: timeout: session 'slowpoke' did not connect within 0.5 s")
    assert "state waiting_qr" in line or "state starting" in line


def test_connect_ends_when_the_session_is_stopped(manual_daemon: DaemonProcess) -> None:
    proc = manual_daemon.popen_wactl("connect", "stopme")
    try:
        assert read_line(proc).startswith("stopme: starting")  # the session exists from here on
        wait_state(manual_daemon, "stopme", "waiting_qr")
        assert manual_daemon.wactl("disconnect", "stopme").returncode == 0
    finally:
        code, _, err = finish(proc)
    assert code == exits.EXIT_SESSION_FAILED
    assert assert_one_error_line(err).startswith(
        "wactl: disconnect_requested: session 'stopme' was stopped"
    )


def test_connect_rate_limited_exits_4(daemon_factory: Callable[..., DaemonProcess]) -> None:
    # A limit far longer than the three wactl processes take to start, however busy
    # the machine: the third must still meet it.
    manual_daemon = daemon_factory(connect_min_interval="3600")
    assert manual_daemon.wactl("connect", "hasty", "--no-wait").returncode == 0
    assert manual_daemon.wactl("disconnect", "hasty").returncode == 0
    result = manual_daemon.wactl("connect", "hasty")
    assert result.returncode == exits.EXIT_RATE_LIMITED, result
    line = assert_one_error_line(result.stderr)
    assert line.startswith("wactl: rate_limited: ")
    assert "retry_after: " in line

    result = manual_daemon.wactl("connect", "hasty", "--no-wait", "--json")
    assert result.returncode == exits.EXIT_RATE_LIMITED
    error = json.loads(assert_one_error_line(result.stderr))["error"]
    assert error["code"] == "rate_limited"
    assert 0 < error["details"]["retry_after"] <= 3600


def test_limit_exceeded_exits_8(daemon_factory: Callable[..., DaemonProcess]) -> None:
    daemon = daemon_factory(max_sessions="1")
    assert daemon.wactl("connect", "one", "--no-wait").returncode == 0
    result = daemon.wactl("connect", "two", "--no-wait")
    assert result.returncode == exits.EXIT_BUSY, result
    assert assert_one_error_line(result.stderr).startswith("wactl: limit_exceeded: ")


def test_connect_ctrl_c_exits_130(manual_daemon: DaemonProcess) -> None:
    proc = manual_daemon.popen_wactl("connect", "impatient")
    assert read_line(proc).startswith("impatient: ")
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == exits.EXIT_INTERRUPTED
    assert "Traceback" not in err


# ============================================================================ reads


def test_status_list_and_history(auto_daemon: DaemonProcess) -> None:
    assert auto_daemon.wactl("connect", "hist").returncode == 0

    listing = auto_daemon.wactl("list")
    assert listing.returncode == 0, listing
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["SESSION", "STATE", "SINCE", "ATTEMPT", "REASON", "LAST_ERROR"]
    row = next(line.split() for line in lines if line.startswith("hist "))
    assert row[1] == "connected"
    assert datetime.strptime(row[2], "%Y-%m-%dT%H:%M:%SZ")
    assert row[3:5] == ["0", "app_loaded"]

    # status without ID is list
    status_all = auto_daemon.wactl("status").stdout.splitlines()
    assert status_all[0] == lines[0]
    assert next(line for line in status_all if line.startswith("hist ")).split()[:2] == [
        "hist",
        "connected",
    ]

    sessions = auto_daemon.wactl_json("list")
    assert isinstance(sessions, list)
    hist = next(s for s in sessions if s["session"] == "hist")
    assert hist["state"] == "connected" and hist["qr"] is None
    assert [s["session"] for s in auto_daemon.wactl_json("status")] == [
        s["session"] for s in sessions
    ]
    only = auto_daemon.wactl_json("list", "--state", "connected")
    assert only and all(s["state"] == "connected" for s in only)
    assert auto_daemon.wactl_json("list", "--state", "logged_out", "--state", "failed") == []

    one = auto_daemon.wactl("status", "hist")
    assert one.returncode == 0
    assert one.stdout.splitlines()[1].split()[:2] == ["hist", "connected"]
    status = auto_daemon.wactl_json("status", "hist")
    assert status["session"] == "hist" and status["state"] == "connected" and status["attempt"] == 0

    history = auto_daemon.wactl("history", "hist")
    assert history.returncode == 0, history
    hlines = history.stdout.splitlines()
    assert hlines[0].split() == ["AT", "FROM", "TO", "REASON", "ATTEMPT", "MESSAGE"]
    assert hlines[1].split()[1:5] == ["stopped", "starting", "connect_requested", "0"]
    transitions = auto_daemon.wactl_json("history", "hist")
    assert [t["to_state"] for t in transitions] == [
        "starting",
        "waiting_qr",
        "authenticating",
        "connected",
    ]
    assert [t["reason"] for t in transitions][-1] == "app_loaded"
    last_two = auto_daemon.wactl_json("history", "hist", "--limit", "2")
    assert last_two == transitions[-2:]


def test_status_shows_the_qr_expiry(manual_daemon: DaemonProcess) -> None:
    connect_waiting(manual_daemon, "qrcol")
    result = manual_daemon.wactl("status", "qrcol")
    header, row = result.stdout.splitlines()
    assert header.split()[-1] == "QR_EXPIRES"
    assert row.split()[1] == "waiting_qr"
    assert row.split()[-1].endswith("Z")


def test_qr_command(manual_daemon: DaemonProcess, tmp_path: Path) -> None:
    connect_waiting(manual_daemon, "qrcmd")
    result = manual_daemon.wactl("qr", "qrcmd")
    assert result.returncode == 0, result
    assert has_qr(result.stdout)
    assert "QR #1 for qrcmd, expires " in result.stdout

    qr = manual_daemon.wactl_json("qr", "qrcmd")
    assert qr["session"] == "qrcmd"
    assert qr["data"].startswith("2@")
    assert qr["seq"] == 1
    generated = datetime.fromisoformat(qr["generated_at"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(qr["expires_at"].replace("Z", "+00:00"))
    assert expires > generated

    png = tmp_path / "code.png"
    result = manual_daemon.wactl("qr", "qrcmd", "--png", str(png))
    assert result.returncode == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"saved to {png}" in result.stdout


def test_qr_without_a_qr_is_not_found(auto_daemon: DaemonProcess) -> None:
    assert auto_daemon.wactl("connect", "noqr").returncode == 0
    result = auto_daemon.wactl("qr", "noqr")
    assert result.returncode == exits.EXIT_NOT_FOUND
    assert "has no QR code" in assert_one_error_line(result.stderr)


def test_metrics(auto_daemon: DaemonProcess) -> None:
    result = auto_daemon.wactl("metrics")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "LABELS", "VALUE"]
    assert any(line.split()[:2] == ["wa_sessions", "state=connected"] for line in lines[1:])

    metrics = auto_daemon.wactl_json("metrics")
    assert metrics["prometheus"] is None
    names = {s["name"] for s in metrics["samples"]}
    assert {"wa_sessions", "wa_rpc_connections"} <= names
    sessions = {
        s["labels"]["state"]: s["value"] for s in metrics["samples"] if s["name"] == "wa_sessions"
    }
    assert set(sessions) == {s.value for s in State}

    text = auto_daemon.wactl("metrics", "--prometheus")
    assert text.returncode == 0
    assert "# TYPE wa_sessions gauge" in text.stdout
    assert 'wa_sessions{state="connected"}' in text.stdout
    assert (
        "# TYPE wa_sessions gauge"
        in auto_daemon.wactl_json("metrics", "--prometheus")["prometheus"]
    )


def test_ping_and_version(auto_daemon: DaemonProcess) -> None:
    result = auto_daemon.wactl("ping")
    assert result.returncode == 0, result
    assert result.stdout.startswith(f"pong from {auto_daemon.socket}: server time ")

    pong = auto_daemon.wactl_json("ping")
    server_time = datetime.fromisoformat(pong["server_time"].replace("Z", "+00:00"))
    assert abs((server_time - datetime.now(timezone.utc)).total_seconds()) < 60
    assert pong["socket"] == str(auto_daemon.socket)
    assert pong["rtt_ms"] >= 0

    result = auto_daemon.wactl("version")
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == f"wactl {__version__}"
    assert "(protocol 1, driver scripted)" in result.stdout
    info = auto_daemon.wactl_json("version")
    assert info == {
        "client": __version__,
        "server": __version__,
        "protocol": 1,
        "driver": "scripted",
    }


def test_version_flag_needs_no_daemon() -> None:
    result = run_wactl("--version", env={**os.environ, "WA_DAEMON_SOCKET": "/nonexistent/d.sock"})
    assert result.returncode == 0
    assert result.stdout.strip() == f"wactl {__version__}"


# ============================================================================ options


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "status", "{id}"],
        ["status", "{id}", "--json"],
        ["--socket", "{sock}", "--json", "status", "{id}"],
        ["status", "{id}", "--socket", "{sock}", "--json"],
        ["--json", "status", "--socket", "{sock}", "{id}"],
        ["--socket", "{sock}", "status", "--json", "{id}"],
    ],
)
def test_global_options_before_and_after_the_command(
    auto_daemon: DaemonProcess, argv: list[str]
) -> None:
    if auto_daemon.wactl("status", "opts").returncode != 0:
        assert auto_daemon.wactl("connect", "opts", "--no-wait").returncode == 0
    env = auto_daemon.env()
    if "--socket" in argv:
        env["WA_DAEMON_SOCKET"] = "/nonexistent/wrong.sock"  # --socket must win
    args = [a.format(id="opts", sock=auto_daemon.socket) for a in argv]
    result = run_wactl(*args, env=env)
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["session"] == "opts"


def test_socket_option_without_env(auto_daemon: DaemonProcess) -> None:
    env = {k: v for k, v in os.environ.items() if k != "WA_DAEMON_SOCKET"}
    for args in (
        ["--socket", str(auto_daemon.socket), "ping"],
        ["ping", "--socket", str(auto_daemon.socket)],
    ):
        result = run_wactl(*args, env=env)
        assert result.returncode == 0, result
        assert result.stdout.startswith("pong ")


def test_not_found_exits_3(auto_daemon: DaemonProcess) -> None:
    for command in ("status", "history", "qr", "disconnect", "logout", "delete", "watch"):
        result = auto_daemon.wactl(command, "ghost")
        assert result.returncode == exits.EXIT_NOT_FOUND, (command, result)
        assert assert_one_error_line(result.stderr) == "wactl: not_found: no session 'ghost'"
    result = auto_daemon.wactl("status", "ghost", "--json")
    assert result.returncode == exits.EXIT_NOT_FOUND
    error = json.loads(assert_one_error_line(result.stderr))["error"]
    assert error == {
        "code": "not_found",
        "message": "no session 'ghost'",
        "details": {"session": "ghost"},
    }
    assert result.stdout == ""


@pytest.mark.parametrize("bad", ["bad/id", "_x", "a" * 65, "spa ce", "new\nline"])
def test_invalid_session_id_exits_7(auto_daemon: DaemonProcess, bad: str) -> None:
    for command in ("connect", "status"):
        result = auto_daemon.wactl(command, bad)
        assert result.returncode == exits.EXIT_INVALID_ARGUMENT, result
        assert assert_one_error_line(result.stderr).startswith(
            "wactl: invalid_argument: invalid session id "
        )
    result = auto_daemon.wactl("status", bad, "--json")
    assert json.loads(assert_one_error_line(result.stderr))["error"]["code"] == "invalid_argument"


def test_invalid_session_id_needs_no_daemon() -> None:
    result = run_wactl("--socket", "/nonexistent/d.sock", "status", "bad/id")
    assert result.returncode == exits.EXIT_INVALID_ARGUMENT


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["simulate", "x", "dance"],
        ["connect"],
        ["connect", "x", "--timeout", "0"],
        ["connect", "x", "--timeout", "nan"],
        ["watch", "x", "--timeout", "86401"],
        ["watch", "--until", "connected"],
        ["watch", "x", "--until", "sleeping"],
        ["history", "x", "--limit", "101"],
        ["status", "x", "--state", "connected"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run_wactl(*args, env={**os.environ, "WA_DAEMON_SOCKET": "/nonexistent/d.sock"})
    assert result.returncode == exits.EXIT_USAGE, result
    assert "usage: wactl" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [["status", "a"], ["list"], ["ping"], ["connect", "a"], ["watch"], ["metrics", "--prometheus"]],
)
def test_daemon_unreachable_exits_5_with_one_line(args: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.sock"
    result = run_wactl("--socket", str(missing), *args)
    assert result.returncode == exits.EXIT_UNREACHABLE
    assert assert_one_error_line(result.stderr) == (
        f"wactl: cannot reach wa-daemon at {missing}: No such file or directory"
    )
    assert result.stdout == ""

    result = run_wactl("--socket", str(missing), "--json", *args)
    assert result.returncode == exits.EXIT_UNREACHABLE
    error = json.loads(assert_one_error_line(result.stderr))["error"]
    assert error["code"] == "unavailable"
    assert error["details"] == {"socket": str(missing)}


def test_with_no_socket_anywhere_the_error_names_every_path_tried(tmp_path: Path) -> None:
    """issue 16: a non-root client (a wa-clients member) looks for a per-user daemon,
    then for the system service's socket. With neither there, the error names both
    and says which one the system service uses, so nobody looks in the wrong place.
    As root the test runs wactl in a user namespace of its own, where its uid is
    65534: a real non-root process, reading the checkout with root's access."""
    from wa_daemon.paths import SYSTEM_SOCKET

    require(not SYSTEM_SOCKET.exists(), f"a system wa-daemon socket exists at {SYSTEM_SOCKET}")
    user = tmp_path / "user" / "wa-daemon" / "wa-daemon.sock"
    env = {k: v for k, v in os.environ.items() if k != "WA_DAEMON_SOCKET"}
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "user")
    as_user = [require_tool("unshare", "util-linux"), "--user"] if os.geteuid() == 0 else []

    def wactl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*as_user, *WACTL, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              encoding="utf-8", timeout=RUN_TIMEOUT, check=False)

    result = wactl("ping")
    assert result.returncode == exits.EXIT_UNREACHABLE, result
    assert assert_one_error_line(result.stderr) == (
        f"wactl: cannot reach wa-daemon: no socket at {user} (a per-user daemon's socket), nor at {SYSTEM_SOCKET}"
        " (the system service's socket, wa-daemon.socket: see systemctl status wa-daemon.socket):"
        " No such file or directory"
    )
    error = json.loads(assert_one_error_line(wactl("--json", "ping").stderr))["error"]
    assert error["details"] == {"socket": str(user), "tried": [str(user), str(SYSTEM_SOCKET)]}

    # Root (and anyone pointed at it) has one candidate, named as the service's.
    result = run_wactl("--socket", str(SYSTEM_SOCKET), "ping")
    assert assert_one_error_line(result.stderr) == (
        f"wactl: cannot reach wa-daemon at {SYSTEM_SOCKET} (the system service's socket, wa-daemon.socket:"
        " see systemctl status wa-daemon.socket): No such file or directory"
    )


def test_stale_socket_is_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))  # bound, never listening: a daemon that died
        result = run_wactl("--socket", str(path), "ping")
    finally:
        sock.close()
    assert result.returncode == exits.EXIT_UNREACHABLE
    assert (
        assert_one_error_line(result.stderr)
        == f"wactl: cannot reach wa-daemon at {path}: Connection refused"
    )


def test_socket_path_too_long_is_unreachable(tmp_path: Path) -> None:
    path = "/tmp/" + "x" * 200 + ".sock"
    result = run_wactl("--socket", path, "ping")
    assert result.returncode == exits.EXIT_UNREACHABLE
    assert assert_one_error_line(result.stderr).startswith(
        f"wactl: cannot reach wa-daemon at {path}: "
    )


# ============================================================================ operations


def test_disconnect_logout_delete(auto_daemon: DaemonProcess) -> None:
    assert auto_daemon.wactl("connect", "ops").returncode == 0

    result = auto_daemon.wactl("disconnect", "ops")
    assert result.returncode == 0, result
    row = result.stdout.splitlines()[1].split()
    assert row[:2] == ["ops", "stopped"] and "disconnect_requested" in row
    assert auto_daemon.wactl_json("disconnect", "ops")["state"] == "stopped"  # idempotent

    status = auto_daemon.wactl_json("logout", "ops")
    assert status["state"] == "logged_out"
    assert status["reason"] == "logout_requested"
    result = auto_daemon.wactl("logout", "ops")
    assert result.returncode == 0
    assert result.stdout.splitlines()[1].split()[:2] == ["ops", "logged_out"]

    watcher = auto_daemon.popen_wactl("watch", "ops")
    try:
        assert " ops snapshot logged_out " in read_line(watcher)
        result = auto_daemon.wactl("delete", "ops")
    finally:
        code, out, _ = finish(watcher)
    assert result.returncode == 0, result
    assert result.stdout.strip() == "deleted ops"
    assert code == 0
    assert out.splitlines()[-1].split()[1:4] == ["ops", "end", "deleted"]
    assert auto_daemon.wactl("status", "ops").returncode == exits.EXIT_NOT_FOUND

    assert auto_daemon.wactl("connect", "ops2", "--no-wait").returncode == 0
    assert auto_daemon.wactl_json("delete", "ops2") == {"session": "ops2"}


def test_simulate(manual_daemon: DaemonProcess) -> None:
    connect_waiting(manual_daemon, "sim")
    watcher = manual_daemon.popen_wactl("watch", "sim", "--until", "connected", "--timeout", "10")
    try:
        first = read_line(watcher)
        result = manual_daemon.wactl("simulate", "sim", "scan")
    finally:
        code, out, _ = finish(watcher)
    assert result.returncode == 0, result
    assert result.stdout.splitlines()[0] == "sent scan to sim"
    assert code == 0
    lines = [first, *out.splitlines()]
    assert " sim snapshot waiting_qr " in lines[0]
    assert any(
        " sim state waiting_qr -> authenticating reason=qr_scanned" in line for line in lines
    )
    assert any(" sim state authenticating -> connected reason=app_loaded" in line for line in lines)
    assert lines[-1].split()[1:5] == ["sim", "end", "until", "state=connected"]

    status = manual_daemon.wactl_json("simulate", "sim", "offline")
    assert status["session"] == "sim"
    deadline = time.monotonic() + 10
    while not manual_daemon.wactl_json("status", "sim")["phone_offline"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "connected [phone offline]" in manual_daemon.wactl("status", "sim").stdout

    assert manual_daemon.wactl("disconnect", "sim").returncode == 0
    result = manual_daemon.wactl("simulate", "sim", "scan")
    assert result.returncode == exits.EXIT_INVALID_ARGUMENT
    assert "no running browser" in assert_one_error_line(result.stderr)


# ============================================================================ watch


def test_watch_until_connected(auto_daemon: DaemonProcess) -> None:
    assert auto_daemon.wactl("connect", "watched", "--no-wait").returncode == 0
    result = auto_daemon.wactl(
        "watch", "watched", "--until", "connected", "--json", "--timeout", "10"
    )
    assert result.returncode == 0, result
    docs = json_lines(result.stdout)
    assert docs[0]["type"] == "snapshot"
    assert docs[-1] == {"type": "end", "reason": "until", "status": docs[-1]["status"]}
    assert docs[-1]["status"]["state"] == "connected"
    assert {d["type"] for d in docs} <= {"snapshot", "state", "qr", "session_error", "end"}


def test_watch_until_timeout_exits_6(manual_daemon: DaemonProcess) -> None:
    connect_waiting(manual_daemon, "neverscan")
    result = manual_daemon.wactl("watch", "neverscan", "--until", "connected", "--timeout", "0.5")
    assert result.returncode == exits.EXIT_SESSION_FAILED, result
    assert result.stdout.splitlines()[-1].split()[1:4] == ["neverscan", "end", "timeout"]
    assert assert_one_error_line(result.stderr).startswith(
        "wactl: timeout: session 'neverscan' did not reach connected within 0.5 s"
    )


def test_watch_all_sessions(manual_daemon: DaemonProcess) -> None:
    assert manual_daemon.wactl("connect", "all1", "--no-wait").returncode == 0
    result = manual_daemon.wactl("watch", "--timeout", "0.5")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert any(" all1 snapshot " in line for line in lines)
    assert lines[-1].split()[1:4] == ["*", "end", "timeout"]

    docs = json_lines(manual_daemon.wactl("watch", "--timeout", "0.3", "--json").stdout)
    assert "all1" in {d["status"]["session"] for d in docs if d["type"] == "snapshot"}
    assert docs[-1] == {"type": "end", "reason": "timeout", "status": None}


def test_watch_ctrl_c_exits_130(manual_daemon: DaemonProcess) -> None:
    assert manual_daemon.wactl("connect", "ctrlc", "--no-wait").returncode == 0
    proc = manual_daemon.popen_wactl("watch", "ctrlc")
    assert " ctrlc snapshot " in read_line(proc)
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == exits.EXIT_INTERRUPTED
    assert err == ""


def test_daemon_dying_mid_watch_exits_5(daemon_factory: Callable[..., DaemonProcess]) -> None:
    daemon = daemon_factory()
    assert daemon.wactl("connect", "orphan", "--no-wait").returncode == 0
    proc = daemon.popen_wactl("watch", "orphan")
    assert " orphan snapshot " in read_line(proc)
    daemon.proc.kill()
    daemon.proc.wait(timeout=10)
    code, _, err = finish(proc)
    assert code == exits.EXIT_UNREACHABLE
    assert assert_one_error_line(err).startswith("wactl: the daemon closed the connection")


def test_daemon_shutdown_during_connect(daemon_factory: Callable[..., DaemonProcess]) -> None:
    daemon = daemon_factory()
    proc = daemon.popen_wactl("connect", "bye")
    try:
        assert read_line(proc).startswith("bye: starting")
        wait_state(daemon, "bye", "waiting_qr")
    finally:
        daemon.stop()
        code, _, err = finish(proc)
    assert code == exits.EXIT_SESSION_FAILED
    assert assert_one_error_line(err).startswith("wactl: shutdown: session 'bye' was stopped")


# ============================================================================ in-process units


def _dt(second: int) -> datetime:
    return datetime(2024, 5, 1, 12, 0, second, 123456, tzinfo=timezone.utc)


def _status(**changes: Any) -> SessionStatus:
    fields: dict[str, Any] = {
        "session": "s1",
        "state": State.CONNECTED,
        "since": _dt(1),
        "attempt": 0,
    }
    fields.update(changes)
    return SessionStatus(**fields)


def test_render_iso_and_table() -> None:
    assert render.iso(_dt(5)) == "2024-05-01T12:00:05Z"
    assert render.iso(datetime(2024, 5, 1, 12, 0, 5)) == "2024-05-01T12:00:05Z"
    assert render.iso(None) == "-"
    assert render.table(["A", "LONGER"], [["xyz", ""], ["1", "2"]]) == "A    LONGER\nxyz\n1    2"
    assert render.cell("two\nlines") == "two lines"


def test_render_status_and_history_tables() -> None:
    qr = QrCode("s1", "2@x", _dt(1), _dt(59), 3)
    text = render.status_table(
        [
            _status(),
            _status(session="s2", state=State.WAITING_QR, qr=qr, busy=True, last_error="boom"),
        ]
    )
    header, first, second = text.splitlines()
    assert header.split() == [
        "SESSION",
        "STATE",
        "SINCE",
        "ATTEMPT",
        "REASON",
        "LAST_ERROR",
        "QR_EXPIRES",
    ]
    assert first.split() == ["s1", "connected", "2024-05-01T12:00:01Z", "0", "-", "-", "-"]
    assert second.split() == [
        "s2",
        "waiting_qr",
        "[busy]",
        "2024-05-01T12:00:01Z",
        "0",
        "-",
        "boom",
        "2024-05-01T12:00:59Z",
    ]
    history = render.history_table(
        [Transition(_dt(2), State.STOPPED, State.STARTING, "connect_requested", 0)]
    )
    assert history.splitlines()[1].split() == [
        "2024-05-01T12:00:02Z",
        "stopped",
        "starting",
        "connect_requested",
        "0",
        "-",
    ]


def test_render_event_lines() -> None:
    now = _dt(9)
    transition = Transition(_dt(3), State.WAITING_QR, State.FAILED, "qr_timeout", 0, "no scan")
    qr = QrCode("s1", "2@x", _dt(4), _dt(24), 2)
    assert render.event_line(StateChanged(transition, _status(state=State.FAILED)), now) == (
        "2024-05-01T12:00:03Z s1 state waiting_qr -> failed reason=qr_timeout attempt=0: no scan"
    )
    assert (
        render.event_line(QrUpdated(qr), now)
        == "2024-05-01T12:00:04Z s1 qr #2 expires=2024-05-01T12:00:24Z"
    )
    assert render.event_line(SessionError("s1", "launch_error", "boom"), now) == (
        "2024-05-01T12:00:09Z s1 error launch_error: boom"
    )
    assert render.event_line(Snapshot(_status(qr=qr, reason="qr_shown")), now) == (
        "2024-05-01T12:00:09Z s1 snapshot connected since=2024-05-01T12:00:01Z attempt=0 reason=qr_shown"
        " qr=#2 expires=2024-05-01T12:00:24Z"
    )
    assert (
        render.end_line(End(1, "until", _status()), "s1", now)
        == "2024-05-01T12:00:09Z s1 end until state=connected"
    )
    assert (
        render.end_line(End(1, "timeout", None), None, now) == "2024-05-01T12:00:09Z * end timeout"
    )


def test_render_qr() -> None:
    text = render.qr_text("2@hello")
    assert "█" in text
    assert "\x1b[7m" in render.qr_text("2@hello", unicode=False)
    qr = QrCode("s1", "2@x", _dt(0), _dt(20), 1)
    assert render.qr_caption(qr, _dt(0)).startswith(
        "QR #1 for s1, expires 2024-05-01T12:00:20Z (in 20 s)."
    )


def test_render_png_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "qr.png"
    target.write_bytes(b"old")
    render.save_png("2@hello", target, scale=2)
    assert target.read_bytes().startswith(b"\x89PNG")
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["qr.png"]


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (NotFound("x"), 3),
        (RateLimited("x"), 4),
        (DaemonUnreachable("x"), 5),
        (ConnectionLost("x"), 5),
        (InvalidArgument("x"), 7),
        (Busy("x"), 8),
        (LimitExceeded("x"), 8),
        (Unavailable("x"), 1),
        (InternalError("x"), 1),
    ],
)
def test_exit_code_for(exc: WaDaemonError, code: int) -> None:
    assert exits.exit_code_for(exc) == code


def _exit_constants() -> dict[str, int]:
    return {name: value for name, value in vars(exits).items() if name.startswith("EXIT_") and isinstance(value, int)}


def test_help_lists_every_exit_code() -> None:
    help_lines = build_parser().format_help().split("exit codes:\n", 1)[1].splitlines()
    listed = {int(line.split()[0]) for line in help_lines}
    assert listed == set(_exit_constants().values())
    assert "  9    health: the daemon answers but a check fails" in help_lines


def test_every_error_maps_to_a_listed_exit_code() -> None:
    codes = set(_exit_constants().values())
    errors: list[Any] = [exits.CliError("x", "x", exits.EXIT_SESSION_FAILED), KeyboardInterrupt()]
    errors += [cls("x") for cls in (NotFound, RateLimited, DaemonUnreachable, ConnectionLost, InvalidArgument,
                                    Busy, LimitExceeded, Unavailable, InternalError, WaDaemonError)]
    assert {exits.fail(exc, json=True) for exc in errors} <= codes


def test_cli_doc_lists_every_exit_code() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    documented = {m[2]: int(m[1]) for m in re.finditer(r"^\| (\d+) \| `(EXIT_\w+)` \|", text, re.M)}
    assert documented == _exit_constants()


def test_parser_accepts_globals_in_both_places() -> None:
    parser = build_parser()
    before = parser.parse_args(["--json", "--socket", "/a", "status", "x"])
    after = parser.parse_args(["status", "x", "--json", "--socket", "/a"])
    neither = parser.parse_args(["status", "x"])
    assert (before.json, before.socket) == (after.json, after.socket) == (True, "/a")
    assert (neither.json, neither.socket) == (False, None)
    assert parser.parse_args(["--socket", "/a", "status", "--socket", "/b"]).socket == "/b"
