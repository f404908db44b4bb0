"""The ``wa-daemon`` command."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

import msgspec
import structlog
import trio

from .._version import __version__
from .app import Daemon
from .config import Config, from_mapping
from .log import configure
from .server import AlreadyRunning, BoundSocket, bind_unix_socket

EXIT_OK = 0
EXIT_CONFIG = 78  # EX_CONFIG: systemd will not restart-loop on a bad configuration
EXIT_IN_USE = 75  # EX_TEMPFAIL: another daemon serves the socket


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` overrides; dotted keys reach sub-tables; VALUE is JSON if it parses."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def build_config(args: argparse.Namespace) -> Config:
    data: dict[str, Any] = _parse_set(args.set)
    for key in ("socket_path", "state_dir", "driver", "log_level", "whatsapp_url"):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    return from_mapping(data)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wa-daemon", description="WhatsApp Web session daemon")
    p.add_argument("--socket", dest="socket_path", help="RPC socket path (default: $WA_DAEMON_SOCKET, "
                   "/run/wa-daemon/wa-daemon.sock for root, $XDG_RUNTIME_DIR/wa-daemon/wa-daemon.sock otherwise)")
    p.add_argument("--state-dir", dest="state_dir", help="state directory (default /var/lib/wa-daemon for root, "
                   "$XDG_STATE_HOME/wa-daemon otherwise)")
    p.add_argument("--driver", choices=["chromium", "scripted"],
                   help="browser driver (default chromium; scripted: in-memory, for tests and load tests)")
    p.add_argument("--wa-url", dest="whatsapp_url", help="WhatsApp Web URL (default https://web.whatsapp.com/; "
                   "point it at wa-daemon-sim to work offline)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any configuration key, e.g. --set qr_timeout=60 --set scripted.auto_scan_after=3")
    p.add_argument("--version", action="version", version=f"wa-daemon {__version__}")
    return p


async def _serve(daemon: Daemon, bound: BoundSocket) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                async for signum in signals:
                    structlog.get_logger("wa_daemon").info("signal", signal=signal.Signals(signum).name)
                    daemon.request_stop()

            nursery.start_soon(on_signal)
            await daemon.run(bound=bound)
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = build_config(args)
    except (ValueError, msgspec.ValidationError) as exc:
        print(f"wa-daemon: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure(config.log_level)
    daemon = Daemon(config)
    try:
        # Bound before the event loop starts, so "already running" is a plain
        # message and exit code, not an error from inside the loop.
        bound = bind_unix_socket(daemon.socket_path)
    except AlreadyRunning as exc:
        print(f"wa-daemon: {exc}", file=sys.stderr)
        return EXIT_IN_USE
    except OSError as exc:
        print(f"wa-daemon: cannot serve on {daemon.socket_path}: {exc}", file=sys.stderr)
        return 1
    trio.run(_serve, daemon, bound)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
