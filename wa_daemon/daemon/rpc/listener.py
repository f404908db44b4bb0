"""The RPC socket's ownership: bound under a umask, a lock file against a second
daemon, stale sockets replaced, sockets passed by systemd adopted; and the
credentials of a connected peer.

Everything here runs before the event loop or between two of its checkpoints:
plain sockets, no trio.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import socket
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .access import PeerCredentials

_PEERCRED = struct.Struct("3i")


class AlreadyRunning(Exception):
    """Another daemon holds the socket's lock file."""


@dataclass
class BoundSocket:
    sock: socket.socket  # listening; wrapped for trio by the accept loop
    path: Path
    lock_fd: int | None  # None: systemd passed the socket and owns the path

    closed: bool = False

    @property
    def activated(self) -> bool:
        return self.lock_fd is None

    def close(self) -> None:
        """Close and unlink the socket, then drop the lock (in that order, so a
        successor that takes the lock never sees our socket file). Idempotent.
        A socket from systemd is only closed: systemd keeps the path and listens
        on it again, so clients that connect while the daemon restarts wait in
        its backlog instead of failing."""
        if self.closed:
            return
        self.closed = True
        self.sock.close()
        if self.lock_fd is None:
            return
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.lock_fd)


def adopt_socket(sock: socket.socket) -> BoundSocket:
    """Serve a listening socket systemd passed (socket activation)."""
    name = sock.getsockname()
    path = Path(name if isinstance(name, str) else name.decode(errors="replace"))
    return BoundSocket(sock, path, None)


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def bind_unix_socket(path: Path, mode: int = 0o660, backlog: int = 512, group: str | None = None) -> BoundSocket:
    """Bind the RPC socket at ``path``, owning it through an flock'd ``path.lock``.

    The lock decides who owns the path: a live daemon holds it, so a second one
    refuses to start; a socket file without a lock holder is stale (a crash left
    it) and is replaced. The socket is created under a umask, so it is never
    more permissive than ``mode``, not even for an instant.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    lock_path = path.with_name(path.name + ".lock")
    lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(lock_fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(lock_fd)
        raise AlreadyRunning(f"another wa-daemon (pid {holder}) is serving {path}") from None
    try:
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(errno.EEXIST, f"{path} exists and is not a socket; refusing to replace it")
            path.unlink()  # stale: its daemon is gone, since we hold the lock
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # A plain socket binds synchronously: no checkpoint, so the process-wide
            # umask cannot leak into another task while it is narrowed.
            with _umask(0o777 & ~mode):
                raw.bind(str(path))
            if group is not None:
                os.chown(path, -1, _gid_of(group))
            os.chmod(path, mode)
            raw.listen(backlog)
        except BaseException:
            raw.close()
            raise
    except BaseException:
        os.close(lock_fd)
        raise
    return BoundSocket(raw, path, lock_fd)


def _gid_of(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise OSError(errno.EINVAL, f"socket_group: no group named {group!r}") from None


class _Socket(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def peer_credentials(sock: _Socket) -> PeerCredentials | None:
    """The peer's (pid, uid, gid) from SO_PEERCRED; None when they cannot be read."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    pid, uid, gid = _PEERCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid)
