"""A real ``redis-server`` for the cluster tests: a subprocess in a temp dir, on a
Unix socket, with AOF persistence (``appendfsync always``) so a test can restart it
with its data or without it. Never the system service."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .helpers import require_tool, short_tmpdir


class RedisServer:
    def __init__(self, directory: Path, *, password: str | None = None) -> None:
        self.binary = require_tool("redis-server", "redis-server")
        self.dir = directory
        self.sock = directory / "redis.sock"
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.sock}"

    def start(self, timeout: float = 10) -> None:
        args = [
            self.binary,
            "--port", "0",
            "--unixsocket", str(self.sock),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--logfile", str(self.dir / "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log()}")
            if self._answers():
                return
            time.sleep(0.02)
        raise TimeoutError(f"redis-server did not start: {self.log()}")

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(str(self.sock))
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGKILL: a crash, not a clean shutdown (appendfsync always keeps every write)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def restart(self, *, keep_data: bool) -> None:
        self.stop()
        if not keep_data:
            shutil.rmtree(self.dir / "appendonlydir", ignore_errors=True)
            (self.dir / "dump.rdb").unlink(missing_ok=True)
        self.sock.unlink(missing_ok=True)
        self.start()


@contextmanager
def redis_server(*, password: str | None = None) -> Iterator[RedisServer]:
    with short_tmpdir() as directory:
        server = RedisServer(directory, password=password)
        server.start()
        try:
            yield server
        finally:
            server.stop()
