"""The ``wactl`` command: drive a running wa-daemon from a shell.

``main`` parses the command line (:mod:`wactl.parser`), runs the subcommand
(:mod:`wactl.commands`) and turns what went wrong into one line on stderr and an
exit code (:mod:`wactl.exits`, documented in docs/cli.md). Output is a human
table by default and JSON with ``--json`` (:mod:`wactl.views`, :mod:`wactl.render`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from wa_daemon import __version__
from wa_daemon.client import Client
from wa_daemon.protocol import validate_session_id

from . import exits
from .commands import COMMANDS, Ctx
from .parser import build_parser, check
from .views import Output


def run(args: argparse.Namespace) -> int:
    session = getattr(args, "session", None)
    if session is not None:
        # Checked here too, so a typo is reported even when no daemon runs.
        validate_session_id(session)
    with Client(args.socket, client_name=f"wactl/{__version__}") as client:
        return COMMANDS[args.command](Ctx(args, Output(sys.stdout, args.json), client))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check(parser, args)
    try:
        return run(args)
    except exits.FAILURES as exc:
        return exits.fail(exc, json=bool(args.json))


if __name__ == "__main__":
    sys.exit(main())
