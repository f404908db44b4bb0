"""A local WhatsApp Web simulator: a page with WhatsApp Web's login contract, run offline.

By default the page offers WhatsApp Web's module layer (``require('WAWebSocketModel')``
and the other modules whatsapp-web.js reads); ``page="legacy"`` serves the DOM-only
page with ``div[data-ref]``. Point a browser driver (the daemon's, or your own) at
it, play the phone through its control API (``POST /__sim__/scan`` with the QR text,
``POST /__sim__/pair`` with a pairing code, faults under ``/__sim__/devices/{id}/...``),
and speed up the QR schedule with ``time_scale``.
See docs/simulator.md.

    from wa_daemon.sim import SimOptions, serve_simulator

    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_simulator, SimOptions(time_scale=0.05))

Needs the ``sim`` extra (trio, hypercorn).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .model import SimModel
from .options import LOCALES, PAGE_KINDS, REF_FORMATS, PageKind, RefFormat, SimOptions
from .records import BadRequest, InvalidState, NotFound, SimError
from .refs import LINK_PREFIX, plain_form

if TYPE_CHECKING:
    from .engine import SimEngine
    from .server import SimApp, serve_simulator

# Imported on first use: they need trio and hypercorn (the sim extra), and the
# options, the model and the wa-daemon-sim command must load without them, so
# the command can say what to install instead of failing on an import.
_LAZY = {"SimEngine": ".engine", "SimApp": ".server", "serve_simulator": ".server"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LINK_PREFIX",
    "LOCALES",
    "PAGE_KINDS",
    "REF_FORMATS",
    "BadRequest",
    "InvalidState",
    "NotFound",
    "PageKind",
    "RefFormat",
    "SimApp",
    "SimEngine",
    "SimError",
    "SimModel",
    "SimOptions",
    "plain_form",
    "serve_simulator",
]
