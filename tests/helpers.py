"""Shared test helpers: an in-memory manager, an in-process daemon, a raw socket peer."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from wa_daemon import Client, WaDaemonError
from wa_daemon.daemon.app import Daemon
from wa_daemon.daemon.browser.procfs import proc_files, stat_fields
from wa_daemon.daemon.browser.scripted import ScriptedDriver
from wa_daemon.daemon.ops.config import Config, from_mapping
from wa_daemon.daemon.sessions.manager import SessionManager
from wa_daemon.protocol import State

CHROMIUM = "/usr/bin/chromium"  # Debian's: the only browser the daemon drives


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require(condition: object, why: str) -> None:
    """Skip the test when ``condition`` is false, except under ``CI=true``: there a
    missing tool or capability fails the test, because a skip would hide lost
    coverage (``.ci/setup`` installs everything the tests need)."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"{why} (required under CI=true)", pytrace=False)
    pytest.skip(why)


def require_tool(name: str, package: str) -> str:
    """The path of command ``name``, required as :func:`require` says."""
    path = shutil.which(name)
    require(path is not None, f"{name} is missing (Debian package {package})")
    assert path is not None
    return path


def require_chromium() -> None:
    require(os.path.exists(CHROMIUM), f"{CHROMIUM} is missing (Debian package chromium)")


# A mark for tests and modules that run Chromium (the fixture is in conftest.py).
needs_chromium = pytest.mark.usefixtures("chromium")


# Where a test that draws a random seed keeps the command that replays it; conftest.py
# puts that command first in the test's failure report.
REPLAY = pytest.StashKey[str]()


def draw_seed(request: pytest.FixtureRequest, env: str, *also: str) -> int:
    """A fresh seed per run (finding new bugs is the point), or ``$env``'s to replay one.
    ``also``: further environment variables the replay must keep (when set)."""
    seed = int(os.environ.get(env, random.randrange(2**32)))
    keep = " ".join(f"{name}={os.environ[name]}" for name in also if name in os.environ)
    command = f"{env}={seed} {keep + ' ' if keep else ''}.venv/bin/python -m pytest -p no:cacheprovider '{request.node.nodeid}'"
    request.node.stash[REPLAY] = f"seed {seed}; replay: {command}"
    print(request.node.stash[REPLAY])
    return seed


# Fast, deterministic defaults for logic tests; each test overrides what it checks.
FAST = {"driver": "scripted", "scripted": {"launch_delay": 0.5, "auth_delay": 1.0}}


def make_config(**overrides: Any) -> Config:
    data: dict[str, Any] = {**FAST, **overrides}
    if "scripted" in overrides:
        data["scripted"] = {**FAST["scripted"], **overrides["scripted"]}
    return from_mapping(data)


@asynccontextmanager
async def open_manager(**overrides: Any) -> AsyncIterator[tuple[SessionManager, ScriptedDriver]]:
    cfg = make_config(**overrides)
    async with trio.open_nursery() as nursery:
        driver = ScriptedDriver(cfg.scripted)
        manager = SessionManager(cfg, driver, nursery, rng=random.Random(1))
        nursery.start_soon(manager.cleanup_loop)
        try:
            yield manager, driver
        finally:
            with trio.CancelScope(shield=True):
                await manager.shutdown()
            nursery.cancel_scope.cancel()


async def wait_state(manager: SessionManager, sid: str, *states: State, timeout: float = 600) -> None:
    """Wait (in trio time) for a session to reach one of ``states``."""
    sub, _ = manager.subscribe(sid, [])
    try:
        with trio.fail_after(timeout):
            while (status := manager.peek(sid)) is None or status.state not in states:
                await sub.next()
    finally:
        manager.unsubscribe(sub)


@contextmanager
def short_tmpdir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="wa-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def running_daemon(sock_dir: Path, **overrides: Any) -> AsyncIterator[Daemon]:
    """A daemon in this trio run, on a real Unix socket."""
    cfg = make_config(socket_path=str(sock_dir / "d.sock"), **overrides)
    daemon = Daemon(cfg, rng=random.Random(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        try:
            yield daemon
        finally:
            daemon.request_stop()


def raw_connect(path: Path, hello: bool = True, timeout: float = 10) -> socket.socket:
    """A bare socket to the daemon, optionally past the hello exchange."""
    from wa_daemon.protocol import ClientProtocol

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    if hello:
        proto = ClientProtocol("raw")
        s.sendall(proto.hello())
        read_message(s, proto)
    return s


def read_message(s: socket.socket, proto: Any = None) -> Any:
    """One server message from a blocking socket, or None at EOF."""
    from wa_daemon.protocol import ClientProtocol

    proto = proto or ClientProtocol("raw")
    while True:
        msg = proto.decoder.next_message()
        if msg is not None:
            return msg
        data = s.recv(65536)
        if not data:
            return None
        proto.decoder.receive_data(data)


class DaemonProcess:
    """A real ``wa-daemon`` subprocess."""

    def __init__(self, sock: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.sock = sock
        self.log = open(sock.parent / "daemon.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wa_daemon.daemon.main", "--socket", str(sock), *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.output()}")
            try:
                with Client(self.sock, timeout=2) as c:
                    c.ping()
                return
            except WaDaemonError:
                time.sleep(0.05)
        raise TimeoutError(f"daemon not ready: {self.output()}")

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.sock.parent / "daemon.log").read_text(errors="replace")

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


def zombies_of(pid: int) -> list[int]:
    """Zombie children of ``pid``: processes it has not reaped."""
    parent = str(pid).encode()
    found = []
    for child, stat in proc_files("stat"):
        fields = stat_fields(stat)
        if fields[0] == b"Z" and fields[1] == parent:
            found.append(child)
    return found
