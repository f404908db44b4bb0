"""The ``wa-daemon`` command."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

import trio

from .._version import __version__
from .app import Daemon
from .cluster.join import JoinRefused
from .ops.configfile import DEFAULT_CONFIG_PATH, ENV_CONFIG, ConfigError, ConfigSource, render
from .ops.log import configure, get_logger
from .ops.systemd import ActivationError, Notifier, activated_socket, listen_fds
from .rpc.listener import AlreadyRunning, BoundSocket, adopt_socket, bind_unix_socket

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


def config_source(args: argparse.Namespace, env: dict[str, str] | None = None) -> ConfigSource:
    overrides: dict[str, Any] = _parse_set(args.set)
    for key in ("socket_path", "state_dir", "driver", "log_level", "whatsapp_url"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    return ConfigSource.from_args(args.config, overrides, env)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wa-daemon",
        description="WhatsApp Web session daemon. `wa-daemon check-config [FILE]` validates a configuration "
        "file and prints the effective configuration; `wa-daemon probe` checks that WhatsApp Web still "
        "offers what a session needs.",
    )
    p.add_argument("--config", metavar="FILE", help=f"configuration file (default: ${ENV_CONFIG}, "
                   f"else {DEFAULT_CONFIG_PATH} if it exists)")
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


def check_config_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wa-daemon check-config",
        description="Validate a configuration (file, then WA_DAEMON_* environment variables) and print the "
        "effective configuration as TOML. Exit 0 when valid, 78 when not.",
    )
    p.add_argument("file", nargs="?", help=f"the file (default: ${ENV_CONFIG}, else {DEFAULT_CONFIG_PATH})")
    p.add_argument("--defaults", action="store_true", help="ignore files and environment: print every default")
    p.add_argument("--quiet", "-q", action="store_true", help="only validate; print errors only")
    return p


def check_config(argv: list[str]) -> int:
    args = check_config_parser().parse_args(argv)
    source = ConfigSource(None, False, {}, {}) if args.defaults else ConfigSource.from_args(args.file, {})
    try:
        config = source.load()
    except ConfigError as exc:
        print(f"wa-daemon: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not args.quiet:
        if source.path is not None and not args.defaults:
            state = "" if source.path.exists() else " (absent: defaults)"
            print(f"# effective configuration from {source.path}{state} and the environment")
        sys.stdout.write(render(config))
    return EXIT_OK


async def _serve(daemon: Daemon, bound: BoundSocket) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                async for signum in signals:
                    get_logger("daemon").info("signal", signal=signal.Signals(signum).name)
                    if signum == signal.SIGHUP:
                        nursery.start_soon(daemon.reload)
                    else:
                        daemon.request_stop()

            nursery.start_soon(on_signal)
            await daemon.run(bound=bound)
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check-config"]:
        return check_config(argv[1:])
    if argv[:1] == ["probe"]:
        from .browser.probe import main as probe

        return probe(argv[1:])
    args = parser().parse_args(argv)
    try:
        source = config_source(args)
        config = source.load()
    except (ValueError, ConfigError) as exc:
        print(f"wa-daemon: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure(config.log_level, config.log_levels)
    daemon = Daemon(config, source=source, notifier=Notifier())
    try:
        # Bound before the event loop starts, so "already running" is a plain
        # message and exit code, not an error from inside the loop.
        fds = listen_fds()
        if fds:
            bound = adopt_socket(activated_socket(fds))
        else:
            bound = bind_unix_socket(daemon.socket_path, group=config.socket_group)
    except ActivationError as exc:
        print(f"wa-daemon: socket activation: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except AlreadyRunning as exc:
        print(f"wa-daemon: {exc}", file=sys.stderr)
        return EXIT_IN_USE
    except OSError as exc:
        print(f"wa-daemon: cannot serve on {daemon.socket_path}: {exc}", file=sys.stderr)
        return 1
    try:
        trio.run(_serve, daemon, bound)
    except Exception as exc:
        refused = _join_refused(exc)
        if refused is None:
            raise
        # several hosts: host_id in use by a live daemon, or a lease_ttl not the fleet's
        print(f"wa-daemon: cannot join the fleet: {refused}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def _join_refused(exc: BaseException) -> JoinRefused | None:
    """The JoinRefused in ``exc``, however deep the nurseries it crossed grouped it."""
    if isinstance(exc, JoinRefused):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _join_refused(inner)
        if found is not None:
            return found
    return None


if __name__ == "__main__":
    sys.exit(main())
