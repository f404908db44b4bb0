"""wactl's command line: the options of every subcommand, their types and bounds,
and the combinations argparse cannot express (:func:`check`)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any, get_args

from wa_daemon import __version__
from wa_daemon.protocol import PHONE_NUMBER_RULE, SimulateAction, State

from .exits import EXIT_UNHEALTHY, EXIT_UNREACHABLE, help_text

# The daemon caps a watch at one day (WatchParams.timeout).
MAX_TIMEOUT = 86400.0
CONNECT_TIMEOUT = 300.0

SIMULATE_ACTIONS: tuple[str, ...] = get_args(SimulateAction)
STATES = [s.value for s in State]


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
        epilog=help_text(),
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
        "--proxy",
        metavar="URL",
        help="this session's browser goes through this proxy: http://[user:password@]host:port, "
        "https://[user:password@]host:port or socks5://host:port; --proxy '' goes direct "
        "(remembered, like --phone)",
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
    q.add_argument(
        "--messages", action="store_true", help="also a line per message received or sent and per ack (never the text)"
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

    add(
        "health",
        f"check the daemon's health: exit 0 when healthy, {EXIT_UNHEALTHY} with the failing "
        f"checks when not, {EXIT_UNREACHABLE} when it does not answer",
    )
    add("hosts", "list the fleet's hosts: heartbeat age, capacity, sessions (several hosts on Redis)")
    q = add("drain", "hand a host's sessions to the fleet's other hosts (admins; several hosts on Redis)")
    q.add_argument("host", metavar="HOST", help="the host's id, as `wactl hosts` lists it")
    q.add_argument("--cancel", action="store_true", help="the host takes sessions again")
    q.add_argument("--wait", action="store_true", help="follow until the host holds no sessions")
    q.add_argument(
        "--timeout", type=float, default=600.0, metavar="SECONDS", help="with --wait: give up after this (default 600)"
    )
    add("ping", "check that the daemon answers")
    add("version", "show the versions of wactl and of the daemon")

    q = add("send", "send a text message through a connected session")
    session(q)
    q.add_argument("to", metavar="TO", help="a phone number (international, digits only) or a chat id")
    q.add_argument("text", metavar="TEXT", help="the message")
    q.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="a retry with the same key returns the first result and sends nothing",
    )

    q = add("messages", "print a session's inbox from a cursor, in order")
    session(q)
    q.add_argument(
        "--after",
        type=_bounded(int, 0, 2**63 - 1),
        default=0,
        metavar="N",
        help="the cursor: print the messages after seq N (default 0: from the start)",
    )
    q.add_argument("--follow", action="store_true", help="after the backlog, print new messages as they come")

    q = add("simulate", "act as the phone on a session (scripted driver only)")
    session(q)
    q.add_argument(
        "action", metavar="ACTION", choices=SIMULATE_ACTIONS, help=", ".join(SIMULATE_ACTIONS)
    )
    return p


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Combinations argparse cannot express."""
    if args.command == "watch" and args.until and args.session is None:
        parser.error("watch --until needs a session ID")
    if args.command == "status" and args.session is not None and args.state:
        parser.error("status --state applies to the list of every session, not to one ID")
