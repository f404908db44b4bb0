"""The ``wa-daemon-sim`` command: run the WhatsApp Web simulator until interrupted."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from .options import LOCALES, PAGE_KINDS, REF_FORMATS, WEIGHTS, SimOptions


def build_parser() -> argparse.ArgumentParser:
    d = SimOptions()
    p = argparse.ArgumentParser(
        prog="wa-daemon-sim",
        description="A local web server whose page follows WhatsApp Web's login contract. "
        "Prints its URL on the first line of stdout.",
    )
    p.add_argument("--host", default=d.host, help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="port; 0 picks a free one (default: %(default)s)")
    p.add_argument(
        "--time-scale",
        type=float,
        default=d.time_scale,
        help="multiply every simulated duration; 0.05 makes the 60 s first ref last 3 s (default: %(default)s)",
    )
    p.add_argument(
        "--loading-time",
        type=float,
        default=d.loading_time,
        help="seconds of loading screen after a scan (default: %(default)s)",
    )
    p.add_argument(
        "--first-qr-ttl", type=float, default=d.first_qr_ttl, help="life of a cycle's first ref (default: %(default)s)"
    )
    p.add_argument("--qr-ttl", type=float, default=d.qr_ttl, help="life of each later ref (default: %(default)s)")
    p.add_argument(
        "--qr-refs-per-cycle",
        type=int,
        default=d.qr_refs_per_cycle,
        help="refs shown before the reload button (default: %(default)s)",
    )
    p.add_argument(
        "--ref-format",
        choices=REF_FORMATS,
        default=d.ref_format,
        help="plain: 4 fields; platform: a 5th field; url: the wa.me linked-devices prefix (default: %(default)s)",
    )
    p.add_argument(
        "--ref-platform", default=d.ref_platform, help="the 5th field of --ref-format platform (default: %(default)s)"
    )
    p.add_argument(
        "--code-ttl",
        type=float,
        default=d.code_ttl,
        help="life of a pairing code (link with phone number) (default: %(default)s)",
    )
    p.add_argument(
        "--page",
        choices=PAGE_KINDS,
        default=d.page,
        help="modules: WhatsApp Web's module layer (require('WAWebSocketModel') ...), as the real page; "
        "legacy: the DOM-only page with div[data-ref] (default: %(default)s)",
    )
    p.add_argument(
        "--locale",
        choices=LOCALES,
        default=d.locale,
        help="language of the module page's texts and <html lang> (default: %(default)s)",
    )
    p.add_argument(
        "--web-version",
        default=d.web_version,
        help="Debug.VERSION of the module page (default: %(default)s)",
    )
    p.add_argument(
        "--drop-module",
        action="append",
        default=[],
        metavar="ID",
        help="leave this module undefined on the module page, e.g. WAWebSocketModel (repeatable)",
    )
    p.add_argument(
        "--weight",
        choices=WEIGHTS,
        default=d.weight,
        help="the logged-in app: light (one placeholder chat) or realistic (a busy account: a few hundred "
        "chats, an open chat, message collections, messages arriving every few seconds) (default: %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="log warnings only, not scans and faults")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = SimOptions(
            host=args.host,
            port=args.port,
            time_scale=args.time_scale,
            loading_time=args.loading_time,
            first_qr_ttl=args.first_qr_ttl,
            qr_ttl=args.qr_ttl,
            qr_refs_per_cycle=args.qr_refs_per_cycle,
            ref_format=args.ref_format,
            ref_platform=args.ref_platform,
            code_ttl=args.code_ttl,
            page=args.page,
            locale=args.locale,
            web_version=args.web_version,
            drop_modules=tuple(args.drop_module),
            weight=args.weight,
        )
    except ValueError as exc:
        print(f"wa-daemon-sim: {exc}", file=sys.stderr)
        return 2
    try:
        import hypercorn  # noqa: F401  (only to check it is installed)
        import trio
    except ImportError as exc:
        print(
            f"wa-daemon-sim: {exc.name} is not installed; the simulator needs: pip install 'wa-daemon[sim]'",
            file=sys.stderr,
        )
        return 1
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return trio.run(_run, options)
    except KeyboardInterrupt:  # Ctrl-C outside the window where the signal handler is installed
        return 130


async def _run(options: SimOptions) -> int:
    import trio

    from .server import serve_simulator

    async with trio.open_nursery() as nursery:
        try:
            url = await nursery.start(serve_simulator, options)
        except OSError as exc:  # the address is taken, or not ours to bind
            print(f"wa-daemon-sim: cannot listen on {options.host}:{options.port}: {exc}", file=sys.stderr)
            return 1
        # The URL alone on the first line: scripts read it with `head -n1`.
        print(url, flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
