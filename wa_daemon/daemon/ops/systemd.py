"""The two systemd protocols the daemon speaks, without libsystemd:
sd_notify (readiness, status, watchdog, reload, stop) and socket activation
(``LISTEN_FDS``). Both do nothing when systemd did not ask for them."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import MutableMapping

from .log import get_logger

log = get_logger("daemon")

SD_LISTEN_FDS_START = 3

# Read once at start-up and removed from the environment, as sd_notify(3) and
# sd_listen_fds(3) do, so Chromium and its helpers never see (or use) them.
_NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(Exception):
    """systemd passed sockets this daemon cannot serve."""


class Notifier:
    """Sends ``KEY=VALUE`` lines to ``$NOTIFY_SOCKET`` (a datagram socket; a
    leading ``@`` means the abstract namespace)."""

    def __init__(self, env: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        values = {name: env.pop(name, None) for name in _NOTIFY_VARS}
        self._address: str | bytes | None = None
        self._sock: socket.socket | None = None
        self.watchdog_usec = 0
        address = values["NOTIFY_SOCKET"]
        if address:
            self._address = b"\0" + address[1:].encode() if address.startswith("@") else address
            # Non-blocking: a systemd that stopped reading must not stall the event loop;
            # a datagram it had no room for is dropped (the next status or ping follows).
            self._sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            )
        usec, pid = values["WATCHDOG_USEC"], values["WATCHDOG_PID"]
        if usec and usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_usec = int(usec)
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog_interval(self) -> float | None:
        """How often to send ``WATCHDOG=1``: half the timeout, as sd_watchdog_enabled(3) advises."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec and self.enabled else None

    def notify(self, *lines: str) -> bool:
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            if not self._failed:  # once: systemd going away must not flood the log
                log.warning("sd_notify_failed", error=str(exc))
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str | None = None) -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd (253+) tell this reload from an older one.
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def listen_fds(env: MutableMapping[str, str] | None = None) -> list[int]:
    """The descriptors systemd passed to this process (none when it passed none
    or passed them to another process: ``LISTEN_PID`` must be ours)."""
    env = os.environ if env is None else env
    values = {name: env.pop(name, None) for name in _LISTEN_VARS}
    pid, count = values["LISTEN_PID"], values["LISTEN_FDS"]
    if not pid or not count or pid != str(os.getpid()):
        return []
    if not count.isdigit():
        raise ActivationError(f"LISTEN_FDS is not a number: {count!r}")
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))
    for fd in fds:
        os.set_inheritable(fd, False)  # Chromium must not inherit the listening socket
    return fds


def activated_socket(fds: list[int]) -> socket.socket:
    """The one listening Unix stream socket among ``fds``."""
    if len(fds) != 1:
        raise ActivationError(f"expected one socket from systemd, got {len(fds)} (ListenStream= once)")
    try:
        sock = socket.socket(fileno=fds[0])
    except OSError as exc:
        raise ActivationError(f"descriptor {fds[0]} from systemd is not a socket: {exc}") from None
    kind = (sock.family, sock.type)
    if kind != (socket.AF_UNIX, socket.SOCK_STREAM):
        sock.detach()
        raise ActivationError(
            f"descriptor {fds[0]} from systemd is {sock.family.name}/{sock.type.name}, "
            "expected a Unix stream socket (ListenStream=/path)"
        )
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ActivationError(f"descriptor {fds[0]} from systemd is not listening (Accept=no expected)")
    return sock
