#!/usr/bin/env python3
"""Keep one WhatsApp session linked from a long-running trio service, across daemon restarts.

    python examples/trio_service.py alice
    python examples/trio_service.py alice --exit-after-connected 1     # exit once connected
    WA_DAEMON_SOCKET=/tmp/d.sock WA_SESSION=alice python examples/trio_service.py

The service attaches to the daemon (``AsyncClient``), makes sure the session is
started (``connect`` is idempotent: a no-op while the session is active, such as
right after the daemon restored it), then follows it with ``watch``. When the
daemon goes away (a restart, an upgrade, a crash) the stream ends with reason
``shutdown`` or the connection is lost; the service then retries with capped
exponential backoff and jitter, and attaches again once the daemon is back.

It prints one line per state change, never the QR payload itself (it is a login
credential); a UI would fetch it with ``qr()`` or draw it from the event.
SIGINT and SIGTERM stop it cleanly (exit 0 for SIGTERM, 130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys

import trio

from wa_daemon import (
    AsyncClient,
    ConnectionLost,
    DaemonUnreachable,
    QrUpdated,
    RateLimited,
    SessionError,
    SessionStatus,
    Snapshot,
    State,
    StateChanged,
    WaDaemonError,
)

RETRY_MIN = 0.2  # seconds before the first attempt to reach the daemon again
RETRY_MAX = 10.0  # cap of the exponential backoff
WATCH_TIMEOUT = 86400.0  # the daemon's maximum; the stream is simply reopened when it ends


class Deleted(Exception):
    """The session was deleted (by an operator, or another service): stop following it."""


def say(text: str) -> None:
    print(text, flush=True)


async def ensure_started(wa: AsyncClient, session: str) -> SessionStatus:
    """``connect``, waiting out the per-session rate limit (``retry_after`` seconds)."""
    while True:
        try:
            return await wa.connect(session)
        except RateLimited as exc:
            say(f"{session}: rate limited, retrying in {exc.retry_after:.1f} s")
            await trio.sleep(exc.retry_after)


async def follow_once(wa: AsyncClient, session: str, exit_after: int, seen: list[int]) -> bool:
    """Follow the session on one daemon connection. True: done (``exit_after`` reached);
    False: the daemon is going away, attach again."""
    status = await ensure_started(wa, session)
    say(f"{session}: {status.state.value}" + (f" ({status.reason})" if status.reason else ""))
    while True:
        async with wa.watch(session, timeout=WATCH_TIMEOUT) as events:
            async for event in events:
                current: SessionStatus | None = None
                if isinstance(event, Snapshot):
                    current = event.status
                elif isinstance(event, StateChanged):
                    t = event.transition
                    say(f"{session}: {t.from_state.value} -> {t.to_state.value} ({t.reason})")
                    current = event.status
                    if t.to_state == State.WAITING_QR and current.qr is not None:
                        say(f"{session}: QR #{current.qr.seq} to scan, expires {current.qr.expires_at:%H:%M:%S} UTC")
                    elif t.to_state == State.FAILED:
                        # Needs someone: a new connect (wactl connect) starts a new attempt.
                        say(f"{session}: failed: {t.message}; see docs/troubleshooting.md#{t.reason}")
                elif isinstance(event, QrUpdated):
                    say(f"{session}: QR #{event.qr.seq} to scan, expires {event.qr.expires_at:%H:%M:%S} UTC")
                elif isinstance(event, SessionError):
                    say(f"{session}: {event.code}: {event.message}")
                if current is not None and current.state == State.CONNECTED:
                    seen[0] += 1
                    say(f"{session}: connected")
                    if exit_after and seen[0] >= exit_after:
                        return True  # leaving the block cancels the stream on the daemon
        end = events.end
        assert end is not None
        if end.reason == "shutdown":
            say("the daemon is shutting down; attaching again when it is back")
            return False
        if end.reason == "deleted":
            raise Deleted(f"session {session!r} was deleted")
        # "timeout": the stream reached WATCH_TIMEOUT; open a new one on the same connection.


async def run(socket: str | None, session: str, exit_after: int) -> int:
    delay = RETRY_MIN
    seen = [0]  # times the session was seen connected
    while True:
        try:
            async with AsyncClient(socket, timeout=30, client_name="trio_service") as wa:
                info = await wa.version()
                say(f"attached to wa-daemon {info.server} at {wa.socket_path} (driver {info.driver})")
                delay = RETRY_MIN
                if await follow_once(wa, session, exit_after, seen):
                    return 0
        except DaemonUnreachable as exc:
            say(f"daemon unreachable ({exc.message}); retrying in {delay:.1f} s")
        except ConnectionLost as exc:
            say(f"connection to the daemon lost ({exc.message}); retrying in {delay:.1f} s")
        except TimeoutError:  # AsyncClient(timeout=30): a call got no answer (anyio's fail_after)
            say(f"no answer from the daemon within 30 s; attaching again in {delay:.1f} s")
        except Deleted as exc:
            say(str(exc))
            return 6
        except WaDaemonError as exc:
            # invalid_argument (a bad id), limit_exceeded, ...: retrying will not help.
            say(f"error: {exc}")
            return 1
        # Jitter, so that many services do not hit a restarting daemon at the same instant.
        await trio.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, RETRY_MAX)


async def main_async(socket: str | None, session: str, exit_after: int) -> int:
    result = 0
    async with trio.open_nursery() as nursery:

        async def stop_on_sigterm() -> None:
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    say("SIGTERM: stopping")
                    nursery.cancel_scope.cancel()  # cancels the watch: the client sends `cancel`
                    return

        async def service() -> None:
            nonlocal result
            result = await run(socket, session, exit_after)
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_on_sigterm)
        nursery.start_soon(service)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("session", nargs="?", default=os.environ.get("WA_SESSION", "demo"),
                   help="session id (default: $WA_SESSION, else 'demo')")
    p.add_argument("--socket", help="daemon socket (default: $WA_DAEMON_SOCKET, else the default path)")
    p.add_argument("--exit-after-connected", type=int, default=0, metavar="N",
                   help="exit 0 once the session has been seen connected N times (default: run forever)")
    args = p.parse_args(argv)
    try:
        return trio.run(main_async, args.socket, args.session, args.exit_after_connected)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
