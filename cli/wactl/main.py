"""The ``wactl`` command: drive a running wa-daemon from a shell.

Each command is one or a few calls on the blocking :class:`wa_daemon.Client`.
Output is a human table by default and JSON with ``--json``; errors go to
stderr as one line, and the exit code tells a script what kind of failure it
met (the ``EXIT_*`` constants, documented in docs/cli.md).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO, get_args

import msgspec

from wa_daemon import __version__
from wa_daemon.client import Client, Watch
from wa_daemon.errors import (
    Busy,
    ConnectionLost,
    DaemonUnreachable,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    RateLimited,
    WaDaemonError,
)
from wa_daemon.protocol import (
    PHONE_NUMBER_RULE,
    End,
    PairingCode,
    PairingCodeUpdated,
    QrCode,
    QrUpdated,
    SessionError,
    SessionStatus,
    SimulateAction,
    Snapshot,
    State,
    StateChanged,
    WatchEvent,
    validate_session_id,
)

from . import render

EXIT_OK = 0
EXIT_ERROR = 1  # any error without a code of its own
EXIT_USAGE = 2  # argparse's own code for a bad command line
EXIT_NOT_FOUND = 3
EXIT_RATE_LIMITED = 4
EXIT_UNREACHABLE = 5  # no daemon on the socket, or it went away mid-call
EXIT_SESSION_FAILED = 6  # a wait ended without reaching the awaited state
EXIT_INVALID_ARGUMENT = 7
EXIT_BUSY = 8  # busy or limit_exceeded: the daemon is at capacity for this request
EXIT_UNHEALTHY = 9  # `wactl health`: the daemon answers but a check fails
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

# The daemon caps a watch at one day (WatchParams.timeout).
MAX_TIMEOUT = 86400.0
CONNECT_TIMEOUT = 300.0

# connect waits for the first of these: connected is success, the rest end the attempt.
CONNECT_UNTIL = (State.CONNECTED, State.FAILED, State.LOGGED_OUT, State.STOPPED)

SIMULATE_ACTIONS: tuple[str, ...] = get_args(SimulateAction)
STATES = [s.value for s in State]


class CliError(Exception):
    """A failure wactl itself diagnoses; reported like a daemon error."""

    def __init__(
        self,
        code: str,
        message: str,
        exit_code: int,
        details: dict[str, Any] | None = None,
        *,
        bare: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.exit_code = exit_code
        self.details: dict[str, Any] = dict(details or {})
        self.bare = bare  # report without the code, like the client's own DaemonUnreachable


class StdoutClosed(Exception):
    """The reader of our stdout went away (``wactl watch | head``)."""


def exit_code_for(exc: WaDaemonError) -> int:
    if isinstance(exc, (DaemonUnreachable, ConnectionLost)):
        return EXIT_UNREACHABLE
    if isinstance(exc, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, RateLimited):
        return EXIT_RATE_LIMITED
    if isinstance(exc, InvalidArgument):
        return EXIT_INVALID_ARGUMENT
    if isinstance(exc, (Busy, LimitExceeded)):
        return EXIT_BUSY
    return EXIT_ERROR


# ============================================================================ output


class Output:
    def __init__(self, stream: TextIO, json: bool) -> None:
        self.stream = stream
        self.json = json
        self.tty = stream.isatty()
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        self.unicode = encoding.startswith("utf")

    def write(self, text: str) -> None:
        try:
            self.stream.write(text)
            # Flushed at once: watch and connect are read live through pipes.
            self.stream.flush()
        except BrokenPipeError:
            raise StdoutClosed from None

    def line(self, text: str = "") -> None:
        self.write(text + "\n")

    def doc(self, obj: Any) -> None:
        """One JSON document on one line."""
        self.line(msgspec.json.encode(obj).decode())


def report_error(
    json: bool, code: str, message: str, details: dict[str, Any], *, bare: bool = False
) -> None:
    """One line on stderr. ``bare`` leaves out the code where it would only repeat the message."""
    if json:
        text = msgspec.json.encode(
            {"error": {"code": code, "message": message, "details": details}}, enc_hook=str
        ).decode()
    elif bare:
        text = f"wactl: {message}"
    else:
        text = f"wactl: {code}: {message}"
    try:
        sys.stderr.write(" ".join(text.splitlines()) + "\n")
        sys.stderr.flush()
    except OSError:
        pass  # nowhere left to report to


def unreachable_error(socket_path: str, exc: OSError) -> CliError:
    """Socket errors the client does not translate itself (a path too long, a reset during hello)."""
    if isinstance(exc, TimeoutError):
        message = f"wa-daemon at {socket_path} did not answer in time"
    else:
        message = f"cannot reach wa-daemon at {socket_path}: {exc.strerror or exc}"
    return CliError("unavailable", message, EXIT_UNREACHABLE, {"socket": socket_path}, bare=True)


# ============================================================================ commands


@dataclass
class Ctx:
    args: argparse.Namespace
    out: Output
    client: Client


def show_status(ctx: Ctx, status: SessionStatus) -> None:
    if ctx.out.json:
        ctx.out.doc(status)
    else:
        ctx.out.line(render.status_table([status]))


def save_png(qr: QrCode, path: str, scale: int) -> None:
    try:
        render.save_png(qr.data, path, scale)
    except OSError as exc:
        raise CliError(
            "io_error", f"cannot write {path}: {exc.strerror or exc}", EXIT_ERROR, {"path": path}
        ) from None


def cmd_list(ctx: Ctx) -> int:
    statuses = ctx.client.list(ctx.args.state or None)
    if ctx.out.json:
        ctx.out.doc(statuses)
    elif statuses:
        ctx.out.line(render.status_table(statuses))
    else:
        ctx.out.line("no sessions")
    return EXIT_OK


def cmd_status(ctx: Ctx) -> int:
    if ctx.args.session is None:
        return cmd_list(ctx)
    show_status(ctx, ctx.client.status(ctx.args.session))
    return EXIT_OK


def cmd_history(ctx: Ctx) -> int:
    transitions = ctx.client.history(ctx.args.session, ctx.args.limit)
    if ctx.out.json:
        ctx.out.doc(transitions)
    elif transitions:
        ctx.out.line(render.history_table(transitions))
    else:
        ctx.out.line("no transitions")
    return EXIT_OK


def cmd_qr(ctx: Ctx) -> int:
    qr = ctx.client.qr(ctx.args.session)
    if ctx.args.png:
        save_png(qr, ctx.args.png, ctx.args.scale)
    if ctx.out.json:
        ctx.out.doc(qr)
        return EXIT_OK
    ctx.out.write(render.qr_text(qr.data, unicode=ctx.out.unicode))
    ctx.out.line(render.qr_caption(qr))
    if ctx.args.png:
        ctx.out.line(f"saved to {ctx.args.png}")
    return EXIT_OK


def cmd_pairing_code(ctx: Ctx) -> int:
    code = ctx.client.pairing_code(ctx.args.session)
    if ctx.out.json:
        ctx.out.doc(code)
    else:
        ctx.out.line(render.code_text(code))
    return EXIT_OK


def cmd_metrics(ctx: Ctx) -> int:
    metrics = ctx.client.metrics(prometheus=ctx.args.prometheus)
    if ctx.out.json:
        ctx.out.doc(metrics)
    elif ctx.args.prometheus:
        ctx.out.write(metrics.prometheus or "")
    else:
        ctx.out.line(render.metrics_table(metrics.samples))
    return EXIT_OK


def cmd_health(ctx: Ctx) -> int:
    report = ctx.client.health()
    if ctx.out.json:
        ctx.out.doc(report)
    else:
        for check in report.checks:
            ctx.out.line(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.message}")
        ctx.out.line("healthy" if report.healthy else "unhealthy")
    if not report.healthy:
        failed = "; ".join(f"{c.name}: {c.message}" for c in report.checks if not c.ok)
        if not ctx.out.json:
            print(f"wactl: unhealthy: {failed}", file=sys.stderr)
        return EXIT_UNHEALTHY
    return EXIT_OK


def cmd_ping(ctx: Ctx) -> int:
    started = time.perf_counter()
    pong = ctx.client.ping()
    rtt_ms = round((time.perf_counter() - started) * 1e3, 3)
    if ctx.out.json:
        ctx.out.doc(
            {**msgspec.to_builtins(pong), "socket": ctx.client.socket_path, "rtt_ms": rtt_ms}
        )
    else:
        ctx.out.line(
            f"pong from {ctx.client.socket_path}: server time {render.iso(pong.server_time)}, {rtt_ms:.1f} ms"
        )
    return EXIT_OK


def cmd_version(ctx: Ctx) -> int:
    info = ctx.client.version()
    if ctx.out.json:
        ctx.out.doc({"client": __version__, **msgspec.to_builtins(info)})
    else:
        ctx.out.line(f"wactl {__version__}")
        ctx.out.line(
            f"wa-daemon {info.server} at {ctx.client.socket_path} (protocol {info.protocol}, driver {info.driver})"
        )
    return EXIT_OK


def cmd_disconnect(ctx: Ctx) -> int:
    show_status(ctx, ctx.client.disconnect(ctx.args.session))
    return EXIT_OK


def cmd_logout(ctx: Ctx) -> int:
    show_status(ctx, ctx.client.logout(ctx.args.session))
    return EXIT_OK


def cmd_delete(ctx: Ctx) -> int:
    deleted = ctx.client.delete(ctx.args.session)
    if ctx.out.json:
        ctx.out.doc(deleted)
    else:
        ctx.out.line(f"deleted {deleted.session}")
    return EXIT_OK


def cmd_simulate(ctx: Ctx) -> int:
    status = ctx.client.simulate(ctx.args.session, ctx.args.action)
    if ctx.out.json:
        ctx.out.doc(status)
    else:
        # The page acts asynchronously: the status is the one from just before it reacts.
        ctx.out.line(f"sent {ctx.args.action} to {status.session}")
        ctx.out.line(render.status_table([status]))
    return EXIT_OK


@contextlib.contextmanager
def watching(stream: Watch) -> Iterator[Watch]:
    """Close ``stream`` on the way out without masking the error that ended it.

    When the daemon answers a watch with an error, the stream closes its socket
    and raises; Watch.close() then still tries to send a cancel on that closed
    socket, and its OSError (EBADF) would replace the daemon's error.
    """
    try:
        yield stream
    finally:
        with contextlib.suppress(OSError):
            stream.close()


def end_doc(end: End) -> dict[str, Any]:
    return {"type": "end", "reason": end.reason, "status": end.status}


def cmd_watch(ctx: Ctx) -> int:
    args, out = ctx.args, ctx.out
    with watching(ctx.client.watch(args.session, until=args.until, timeout=args.timeout)) as stream:
        for event in stream:
            if out.json:
                out.doc(event)
            else:
                out.line(render.event_line(event))
        end = stream.end
    assert end is not None  # the iterator stops only once the daemon sent End
    if out.json:
        out.doc(end_doc(end))
    else:
        out.line(render.end_line(end, args.session))
    if end.reason == "shutdown":
        raise CliError("unavailable", "the daemon is shutting down", EXIT_UNREACHABLE)
    if not args.until or end.reason == "until":
        return EXIT_OK
    wanted = " or ".join(args.until)
    state = end.status.state.value if end.status is not None else "unknown"
    if end.reason == "deleted":
        message = f"session {args.session!r} was deleted before it reached {wanted}"
    else:
        message = f"session {args.session!r} did not reach {wanted} within {args.timeout:g} s (state {state})"
    raise CliError(
        end.reason, message, EXIT_SESSION_FAILED, {"session": args.session, "state": state}
    )


class ConnectView:
    """Shows a connect wait: a line per state change, the QR drawn again on each refresh.

    On a terminal the new QR replaces the old one in place; into a file or a pipe
    each QR is printed below the previous one, since there is nothing to redraw.
    """

    def __init__(self, out: Output, png: str | None, scale: int) -> None:
        self.out = out
        self.png = png
        self.scale = scale
        self.state: State | None = None
        self.qr_data: str | None = None
        self.code: PairingCode | None = None
        # Terminal rows written since the current QR was drawn; 0 when nothing can be redrawn.
        self.rows = 0

    def print(self, text: str) -> None:
        self.out.line(text)
        if self.rows:
            self.rows += self._rows_of(text)

    @staticmethod
    def _rows_of(text: str) -> int:
        width = max(1, shutil.get_terminal_size().columns)
        return sum(max(1, math.ceil(len(line) / width)) for line in text.split("\n"))

    def status(self, status: SessionStatus) -> None:
        if status.state != self.state:
            self.state = status.state
            if status.state not in (State.WAITING_QR, State.WAITING_CODE):
                self.rows = 0  # the login phase is over: its QR or code stays on screen as history
            if not self.out.json:
                self.print(render.state_line(status))
        if status.qr is not None:
            self.qr(status.qr)
        if status.pairing_code is not None:
            self.pairing_code(status.pairing_code)

    def qr(self, qr: QrCode) -> None:
        # A snapshot carries the QR of the moment, which the next qr event may repeat.
        if qr.data == self.qr_data:
            return
        self.qr_data = qr.data
        if self.png:
            save_png(qr, self.png, self.scale)
        if self.out.json:
            return
        caption = render.qr_caption(qr)
        if self.png:
            caption += f" Saved to {self.png}."
        self._redraw(render.qr_text(qr.data, unicode=self.out.unicode).rstrip("\n"), caption)

    def pairing_code(self, code: PairingCode) -> None:
        if code == self.code:
            return
        self.code = code
        if not self.out.json:
            self._redraw(render.code_text(code))

    def _redraw(self, *blocks: str) -> None:
        """Print ``blocks`` in place of the previous QR or code on a terminal."""
        if self.out.tty and self.rows:
            if self.rows < shutil.get_terminal_size().lines:
                self.out.write(f"\x1b[{self.rows}A\r\x1b[J")  # up to the old one, erase to the end
            else:
                self.out.write("\x1b[H\x1b[2J")  # it scrolled out of reach: clear the screen
        for block in blocks:
            self.out.line(block)
        if self.out.tty:
            self.rows = sum(self._rows_of(block) for block in blocks)

    def event(self, event: WatchEvent) -> None:
        if self.out.json:
            self.out.doc(event)
        if isinstance(event, (Snapshot, StateChanged)):
            self.status(event.status)
        elif isinstance(event, QrUpdated):
            self.qr(event.qr)
        elif isinstance(event, PairingCodeUpdated):
            self.pairing_code(event.code)
        elif isinstance(event, SessionError) and not self.out.json:
            self.print(f"{event.session}: error {event.code}: {render.cell(event.message)}")


def session_ended(status: SessionStatus) -> CliError:
    verb = {
        State.FAILED: "failed",
        State.LOGGED_OUT: "was logged out",
        State.STOPPED: "was stopped",
    }
    message = f"session {status.session!r} {verb.get(status.state, 'is ' + status.state.value)}"
    if status.message:
        message += f": {status.message}"
    details = {
        "session": status.session,
        "state": status.state.value,
        "reason": status.reason,
        "message": status.message,
        "last_error": status.last_error,
    }
    return CliError(status.reason or status.state.value, message, EXIT_SESSION_FAILED, details)


def cmd_connect(ctx: Ctx) -> int:
    args, out = ctx.args, ctx.out
    status = ctx.client.connect(args.session, phone_number=args.phone)
    if args.no_wait:
        show_status(ctx, status)
        return EXIT_OK
    view = ConnectView(out, args.png, args.scale)
    if out.json:
        out.doc({"type": "connect", "status": status})
    view.status(status)
    if status.state == State.CONNECTED:
        return EXIT_OK
    with watching(
        ctx.client.watch(args.session, until=CONNECT_UNTIL, timeout=args.timeout)
    ) as stream:
        for event in stream:
            view.event(event)
        end = stream.end
    assert end is not None  # the iterator stops only once the daemon sent End
    if out.json:
        out.doc(end_doc(end))
    final = end.status
    if end.reason == "until" and final is not None:
        if final.state == State.CONNECTED:
            return EXIT_OK
        raise session_ended(final)
    if end.reason == "shutdown":
        raise CliError("unavailable", "the daemon shut down during the wait", EXIT_UNREACHABLE)
    state = final.state.value if final is not None else "unknown"
    details = {"session": args.session, "state": state}
    if end.reason == "deleted":
        raise CliError(
            "deleted",
            f"session {args.session!r} was deleted during the wait",
            EXIT_SESSION_FAILED,
            details,
        )
    raise CliError(
        "timeout",
        f"session {args.session!r} did not connect within {args.timeout:g} s (state {state})",
        EXIT_SESSION_FAILED,
        details,
    )


COMMANDS: dict[str, Callable[[Ctx], int]] = {
    "connect": cmd_connect,
    "status": cmd_status,
    "list": cmd_list,
    "watch": cmd_watch,
    "disconnect": cmd_disconnect,
    "logout": cmd_logout,
    "delete": cmd_delete,
    "history": cmd_history,
    "qr": cmd_qr,
    "pairing-code": cmd_pairing_code,
    "metrics": cmd_metrics,
    "health": cmd_health,
    "ping": cmd_ping,
    "version": cmd_version,
    "simulate": cmd_simulate,
}

# ============================================================================ parser


def phone_number(text: str) -> str:
    digits = text.strip()
    if digits and not re.fullmatch(PHONE_NUMBER_RULE, digits):
        raise argparse.ArgumentTypeError(
            f"not a phone number: {text!r} (international, 7 to 15 digits, no '+', spaces or dashes)"
        )
    return digits


def _bounded(
    kind: Callable[[str], Any], low: float, high: float, exclusive_low: bool = False
) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        # Written so that NaN fails both comparisons.
        if not ((value > low if exclusive_low else value >= low) and value <= high):
            bound = f"> {low:g}" if exclusive_low else f">= {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bound} and <= {high:g}, got {text}")
        return value

    return parse


seconds = _bounded(float, 0, MAX_TIMEOUT, exclusive_low=True)

EXIT_CODES_HELP = """\
exit codes:
  0    ok
  1    other error
  2    usage error
  3    not found
  4    rate limited (retry after the number of seconds printed)
  5    daemon unreachable
  6    the session ended in failure, or a wait timed out
  7    invalid argument
  8    busy, or a daemon limit exceeded
  130  interrupted (Ctrl-C)
"""


def _add_globals(p: argparse.ArgumentParser, *, sub: bool) -> None:
    # On subcommands the defaults are SUPPRESS, so an option given before the
    # subcommand is not overwritten by the subcommand's default.
    p.add_argument(
        "--socket",
        metavar="PATH",
        default=argparse.SUPPRESS if sub else None,
        help="daemon socket (default: $WA_DAEMON_SOCKET, /run/wa-daemon/wa-daemon.sock for root, "
        "$XDG_RUNTIME_DIR/wa-daemon/wa-daemon.sock otherwise)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if sub else False,
        help="JSON output for scripts (errors too, on stderr)",
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _add_globals(common, sub=True)
    p = argparse.ArgumentParser(
        prog="wactl",
        description="Control the WhatsApp Web sessions of a running wa-daemon.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_globals(p, sub=False)
    p.add_argument("--version", action="version", version=f"wactl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common])

    def session(q: argparse.ArgumentParser, optional: bool = False) -> None:
        if optional:
            q.add_argument(
                "session", metavar="ID", nargs="?", help="session id (default: every session)"
            )
        else:
            q.add_argument("session", metavar="ID", help="session id")

    def png(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--png", metavar="FILE", help="also save the QR as a PNG (replaced on each refresh)"
        )
        q.add_argument(
            "--scale",
            type=_bounded(int, 1, 100),
            default=8,
            metavar="N",
            help="PNG pixels per QR module (default 8)",
        )

    def states(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--state",
            action="append",
            choices=STATES,
            metavar="STATE",
            help="only sessions in this state (repeatable): " + ", ".join(STATES),
        )

    q = add("connect", "start a session; show its QR (or pairing code) until it is connected")
    session(q)
    png(q)
    q.add_argument(
        "--phone",
        type=phone_number,
        metavar="NUMBER",
        help="link with a pairing code for this number (international, digits only, e.g. 12025550108) "
        "instead of a QR; --phone '' goes back to QR linking",
    )
    q.add_argument(
        "--no-wait", action="store_true", help="return after the connect call, printing the status"
    )
    q.add_argument(
        "--timeout",
        type=seconds,
        default=CONNECT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up waiting after this long (default {CONNECT_TIMEOUT:g})",
    )

    q = add("status", "show one session, or every session")
    session(q, optional=True)
    states(q)

    q = add("list", "show every session")
    states(q)

    q = add("watch", "print one line per event of a session, or of every session")
    session(q, optional=True)
    q.add_argument(
        "--until",
        action="append",
        choices=STATES,
        default=[],
        metavar="STATE",
        help="end once the session reaches this state (repeatable; needs ID)",
    )
    q.add_argument(
        "--timeout",
        type=seconds,
        default=MAX_TIMEOUT,
        metavar="SECONDS",
        help=f"end the stream after this long (default and maximum {MAX_TIMEOUT:g})",
    )

    session(add("disconnect", "stop a session's browser; its login is kept"))
    session(add("logout", "unlink a session from the phone and wipe its login"))
    session(add("delete", "stop a session and forget it, login included"))

    q = add("history", "show a session's state transitions")
    session(q)
    q.add_argument(
        "--limit",
        type=_bounded(int, 1, 100),
        default=100,
        metavar="N",
        help="at most this many, the latest (1-100, default 100)",
    )

    q = add("qr", "show a session's current QR and its expiry")
    session(q)
    png(q)

    session(add("pairing-code", "show a session's current pairing code and where to type it"))

    q = add("metrics", "show the daemon's metrics")
    q.add_argument("--prometheus", action="store_true", help="print the Prometheus text exposition")

    add("health", f"check the daemon's health: exit 0 when healthy, {EXIT_UNHEALTHY} with the failing "
        f"checks when not, {EXIT_UNREACHABLE} when it does not answer")
    add("ping", "check that the daemon answers")
    add("version", "show the versions of wactl and of the daemon")

    q = add("simulate", "act as the phone on a session (scripted driver only)")
    session(q)
    q.add_argument(
        "action", metavar="ACTION", choices=SIMULATE_ACTIONS, help=", ".join(SIMULATE_ACTIONS)
    )
    return p


# ============================================================================ main


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Combinations argparse cannot express."""
    if args.command == "watch" and args.until and args.session is None:
        parser.error("watch --until needs a session ID")
    if args.command == "status" and args.session is not None and args.state:
        parser.error("status --state applies to the list of every session, not to one ID")


def run(args: argparse.Namespace) -> int:
    client = Client(args.socket, client_name=f"wactl/{__version__}")
    try:
        session = getattr(args, "session", None)
        if session is not None:
            # Checked here too, so a typo is reported even when no daemon runs.
            validate_session_id(session)
        with client:
            return COMMANDS[args.command](Ctx(args, Output(sys.stdout, args.json), client))
    except OSError as exc:
        raise unreachable_error(client.socket_path, exc) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    json = bool(args.json)
    try:
        return run(args)
    except CliError as exc:
        report_error(json, exc.code, exc.message, exc.details, bare=exc.bare)
        return exc.exit_code
    except (DaemonUnreachable, ConnectionLost) as exc:
        report_error(json, exc.code, exc.message, exc.details, bare=True)
        return EXIT_UNREACHABLE
    except RateLimited as exc:
        # JSON readers have details.retry_after; a human gets the number in the line.
        message = exc.message if json else f"{exc.message} (retry_after: {exc.retry_after:g} s)"
        report_error(json, exc.code, message, exc.details)
        return EXIT_RATE_LIMITED
    except WaDaemonError as exc:
        report_error(json, exc.code, exc.message, exc.details)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except StdoutClosed:
        # Keep the interpreter from failing again while flushing stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
