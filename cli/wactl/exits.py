"""wactl's exit codes, and the one mapping from an error to its stderr line and exit code.

docs/cli.md documents the codes; ``wactl --help`` lists them from :data:`EXIT_HELP`
(tests check that help, this module and the doc agree).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import msgspec

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

EXIT_HELP: dict[int, str] = {
    EXIT_OK: "ok",
    EXIT_ERROR: "other error",
    EXIT_USAGE: "usage error",
    EXIT_NOT_FOUND: "not found",
    EXIT_RATE_LIMITED: "rate limited (retry after the number of seconds printed)",
    EXIT_UNREACHABLE: "daemon unreachable",
    EXIT_SESSION_FAILED: "the session ended in failure, or a wait timed out",
    EXIT_INVALID_ARGUMENT: "invalid argument",
    EXIT_BUSY: "busy, or a daemon limit exceeded",
    EXIT_UNHEALTHY: "health: the daemon answers but a check fails",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


def help_text() -> str:
    """The ``exit codes:`` section of ``wactl --help``."""
    return "exit codes:\n" + "".join(f"  {code:<4} {text}\n" for code, text in EXIT_HELP.items())


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


# What main() turns into an exit code; anything else is a bug and keeps its traceback.
FAILURES = (CliError, WaDaemonError, KeyboardInterrupt, StdoutClosed)


def fail(exc: CliError | WaDaemonError | KeyboardInterrupt | StdoutClosed, json: bool) -> int:
    """Report ``exc`` on stderr (nothing for Ctrl-C and a closed stdout); its exit code."""
    if isinstance(exc, CliError):
        report_error(json, exc.code, exc.message, exc.details, bare=exc.bare)
        return exc.exit_code
    if isinstance(exc, WaDaemonError):
        message = exc.message
        if isinstance(exc, RateLimited) and not json:
            # JSON readers have details.retry_after; a human gets the number in the line.
            message = f"{exc.message} (retry_after: {exc.retry_after:g} s)"
        unreachable = isinstance(exc, (DaemonUnreachable, ConnectionLost))
        report_error(json, exc.code, message, exc.details, bare=unreachable)
        return exit_code_for(exc)
    if isinstance(exc, StdoutClosed):
        # Keep the interpreter from failing again while flushing stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_ERROR
    return EXIT_INTERRUPTED
