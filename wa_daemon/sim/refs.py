"""Login refs: the string a WhatsApp Web QR encodes, its variants, and its QR modules."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from functools import lru_cache

import segno

from .options import RefFormat

LINK_PREFIX = "https://wa.me/settings/linked_devices#"


@dataclass(frozen=True)
class Ref:
    """``shown`` is what the page puts in ``data-ref`` and the QR; ``plain`` its 4-field form."""

    shown: str
    plain: str


def _b64(n: int) -> str:
    return base64.b64encode(secrets.token_bytes(n)).decode()


def new_ref(fmt: RefFormat = "plain", platform: str = "WEB") -> Ref:
    """``2@<random>,<base64 key>,<base64 key>,<base64 secret>`` in the requested variant."""
    plain = f"2@{_b64(48)},{_b64(32)},{_b64(32)},{_b64(32)}"
    if fmt == "platform":
        return Ref(f"{plain},{platform}", plain)
    if fmt == "url":
        return Ref(LINK_PREFIX + plain, plain)
    return Ref(plain, plain)


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
