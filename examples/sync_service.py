#!/usr/bin/env python3
"""Link one WhatsApp session with the blocking client, the way a script, a cron job
or a Django/Flask view would.

    python examples/sync_service.py alice                 # QR in the terminal
    python examples/sync_service.py alice --png qr.png    # and as a PNG, replaced on each refresh
    WA_DAEMON_SOCKET=/tmp/d.sock python examples/sync_service.py alice

It starts the session (``connect`` is idempotent), shows each QR code as it
comes, and exits once the session is ``connected`` (exit 0). Any other end is
reported by exception type and mapped to the same exit codes as ``wactl``:
3 not found, 4 rate limited, 5 daemon unreachable, 6 the session ended in
failure or the wait timed out, 7 invalid argument, 8 busy or limit exceeded.

Needs only ``pip install wa-daemon`` (the client; segno draws the QR codes).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import segno

from wa_daemon import (
    Busy,
    Client,
    DaemonUnreachable,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    QrCode,
    QrUpdated,
    RateLimited,
    SessionError,
    SessionStatus,
    Snapshot,
    State,
    StateChanged,
    Unavailable,
    WaDaemonError,
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NOT_FOUND = 3
EXIT_RATE_LIMITED = 4
EXIT_UNREACHABLE = 5
EXIT_SESSION_FAILED = 6
EXIT_INVALID_ARGUMENT = 7
EXIT_BUSY = 8

# The wait ends at the first of these: connected is success, the others need a human.
FINAL_STATES = [State.CONNECTED, State.FAILED, State.LOGGED_OUT, State.STOPPED]


def show_qr(qr: QrCode, png: str | None) -> None:
    """Draw the QR in the terminal (two modules per character cell) and optionally save it.

    The QR payload is a login credential: whoever scans it links their phone to this
    session. Do not log it; show it only to the person who should scan it.
    """
    code = segno.make(qr.data, micro=False)
    if png:
        # mkstemp: mode 0600; the rename means a viewer never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(png)), suffix=".png.tmp")
        with os.fdopen(fd, "wb") as f:
            code.save(f, kind="png", scale=8)
        os.replace(tmp, png)
    print(f"QR #{qr.seq} for {qr.session}, expires {qr.expires_at:%H:%M:%S} UTC"
          + (f", saved to {png}" if png else ""))
    rows = [[bool(v) for v in row] for row in code.matrix_iter(scale=1, border=2)]
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))
    blocks = {(True, True): "\u2588", (True, False): "\u2580", (False, True): "\u2584", (False, False): " "}
    for top, bottom in zip(rows[0::2], rows[1::2], strict=True):
        print("".join(blocks[t, b] for t, b in zip(top, bottom, strict=True)))
    print("Scan it in WhatsApp: Settings > Linked devices > Link a device.", flush=True)


def start(wa: Client, session: str, retries: int = 3) -> SessionStatus:
    """``connect``, waiting out the daemon's per-session rate limit a few times."""
    for attempt in range(retries + 1):
        try:
            return wa.connect(session)
        except RateLimited as exc:
            # connect came less than connect_min_interval (5 s) after the previous attempt
            # of this session; retry_after says how long to wait, in seconds.
            if attempt == retries:
                raise
            print(f"rate limited, retrying in {exc.retry_after:.1f} s", flush=True)
            time.sleep(exc.retry_after)
    raise AssertionError("unreachable")


def link(wa: Client, session: str, png: str | None, timeout: float) -> SessionStatus:
    """Start ``session`` and follow it until it reaches a final state; return that status."""
    status = start(wa, session)
    print(f"{session}: {status.state.value}", flush=True)
    shown_seq = 0
    # watch() opens a connection of its own; the stream begins with a snapshot, so
    # nothing that happened since connect() returned is missed.
    with wa.watch(session, until=FINAL_STATES, timeout=timeout) as events:
        for event in events:
            qr: QrCode | None = None
            if isinstance(event, (Snapshot, StateChanged)):
                if isinstance(event, StateChanged):
                    t = event.transition
                    print(f"{session}: {t.from_state.value} -> {t.to_state.value} ({t.reason})", flush=True)
                qr = event.status.qr  # the state event into waiting_qr already carries the first QR
            elif isinstance(event, QrUpdated):
                qr = event.qr
            elif isinstance(event, SessionError):
                print(f"{session}: {event.code}: {event.message}", flush=True)
            if qr is not None and qr.seq != shown_seq:  # the same QR can come twice
                shown_seq = qr.seq
                show_qr(qr, png)
    end = events.end
    assert end is not None  # the loop stops only once the daemon ended the stream
    if end.reason == "shutdown":
        raise Unavailable("the daemon shut down during the wait")
    if end.status is None:
        raise Unavailable(f"the stream ended ({end.reason}) without a status")
    if end.reason == "timeout":
        print(f"{session}: not connected within {timeout:g} s (state {end.status.state.value})", flush=True)
    return end.status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("session", nargs="?", default=os.environ.get("WA_SESSION", "demo"),
                   help="session id (default: $WA_SESSION, else 'demo')")
    p.add_argument("--socket", help="daemon socket (default: $WA_DAEMON_SOCKET, else the default path)")
    p.add_argument("--png", metavar="FILE", help="also save each QR as a PNG")
    p.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds (default 300)")
    args = p.parse_args(argv)

    try:
        # One Client per process is enough: it is thread-safe (one call at a time on its
        # connection) and reconnects by itself on the next call after a broken exchange.
        with Client(args.socket, timeout=30) as wa:
            status = link(wa, args.session, args.png, args.timeout)
    except DaemonUnreachable as exc:  # no socket, nobody listening, or permission denied on it
        print(f"error: {exc.message} (is wa-daemon running? are you in its socket's group?)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except RateLimited as exc:
        print(f"error: {exc.message}; retry in {exc.retry_after:g} s", file=sys.stderr)
        return EXIT_RATE_LIMITED
    except InvalidArgument as exc:  # e.g. a session id that breaks the rule, details["rule"]
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_INVALID_ARGUMENT
    except (Busy, LimitExceeded) as exc:  # another operation holds the session / max_sessions reached
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except NotFound as exc:  # the session was deleted meanwhile
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except Unavailable as exc:  # shutting down, or the connection was lost (ConnectionLost)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except WaDaemonError as exc:  # any other code, including ones newer than this client
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # leaving the with-blocks cancels the watch and closes the sockets
        return 130

    if status.state == State.CONNECTED:
        print(f"{status.session}: connected", flush=True)
        return EXIT_OK
    # failed (qr_timeout, launch_error, ...), logged_out or stopped: docs/troubleshooting.md
    # has a section per state and reason.
    print(f"{status.session}: ended in {status.state.value} ({status.reason}): {status.message or ''}",
          file=sys.stderr)
    return EXIT_SESSION_FAILED


if __name__ == "__main__":
    sys.exit(main())
