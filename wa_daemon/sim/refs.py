"""Login refs: the string a WhatsApp Web QR encodes, its variants, and its QR modules.

A page load has registration keys of its own (the noise static key, the signal
identity key and the ADV secret, 32 bytes each), fixed for that load as on WhatsApp
Web; only the server's ref (``2@...``) rotates. The phone scans
``ref,staticKey,identityKey,advSecret,platform`` (the five fields whatsapp-web.js
assembles from the page's modules), or, on the legacy page, the ``data-ref`` text.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from functools import lru_cache

import segno

from .options import PageKind, RefFormat

LINK_PREFIX = "https://wa.me/settings/linked_devices#"


@dataclass(frozen=True)
class PageKeys:
    """A page load's registration keys, base64 as the page's ``WABase64.encodeB64`` gives them."""

    static: str
    identity: str
    adv_secret: str
    platform: str

    def json(self) -> dict[str, str]:
        return {
            "static": self.static,
            "identity": self.identity,
            "adv_secret": self.adv_secret,
            "platform": self.platform,
        }


@dataclass(frozen=True)
class Ref:
    """``conn`` is ``Conn.ref``; ``shown`` what the page's QR encodes (and the legacy page's
    ``data-ref``); ``plain`` the 4-field form; ``full`` the 5-field form."""

    conn: str
    shown: str
    plain: str
    full: str

    def accepts(self, presented: str) -> bool:
        return presented.strip() in (self.shown, self.plain, self.full)


def _b64(n: int) -> str:
    return base64.b64encode(secrets.token_bytes(n)).decode()


def new_keys(platform: str = "WEB") -> PageKeys:
    return PageKeys(static=_b64(32), identity=_b64(32), adv_secret=_b64(32), platform=platform)


def new_ref(keys: PageKeys, fmt: RefFormat = "plain", page: PageKind = "modules") -> Ref:
    """A new server ref for the page holding ``keys``, in what that page shows."""
    conn = f"2@{_b64(48)}"
    plain = f"{conn},{keys.static},{keys.identity},{keys.adv_secret}"
    full = f"{plain},{keys.platform}"
    if page == "modules":  # the real page: the QR is always the five fields
        shown = full
    elif fmt == "platform":
        shown = full
    elif fmt == "url":
        shown = LINK_PREFIX + plain
    else:
        shown = plain
    return Ref(conn=conn, shown=shown, plain=plain, full=full)


def plain_form(presented: str) -> str:
    """The 4-field form of whatever variant a phone presents."""
    text = presented.strip()
    if text.startswith(LINK_PREFIX):
        text = text[len(LINK_PREFIX) :]
    return ",".join(text.split(",")[:4])


@lru_cache(maxsize=256)
def qr_rows(text: str) -> tuple[str, ...]:
    """QR modules of ``text`` without quiet zone, one string of 0/1 per row.

    Computed here rather than in the page so the page needs no QR library and
    the picture is exactly what segno (and so wactl) would draw.
    """
    matrix = segno.make(text, error="l", micro=False).matrix
    return tuple("".join("1" if module else "0" for module in row) for row in matrix)
