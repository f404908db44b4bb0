"""Per-session settings: what ``connect`` gave, and what the session then uses.

A session's options are kept as given (None: "the daemon's setting"), so a
configuration reload changes the sessions that did not choose. :func:`resolve`
is the one place where None becomes the daemon's value; the session, its
machine and the manager's sweep all read settings through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from ...protocol import ConnectParams
from ...proxy import Proxy, parse_proxy
from ..ops.config import Config


class SessionOptions(msgspec.Struct, frozen=True, omit_defaults=True):
    """Per-session settings given to ``connect``; None falls back to the daemon's configuration."""

    whatsapp_url: str | None = None
    takeover_on_conflict: bool | None = None
    idle_timeout: float | None = None
    phone_number: str | None = None  # link by pairing code for this number; None or "": by QR
    proxy: str | None = None  # as given, password included (kept in the registry, 0600); "": direct

    @classmethod
    def of(cls, params: ConnectParams) -> SessionOptions:
        """The options a ``connect`` request carries (``proxy`` already checked by parse_proxy)."""
        return cls(params.whatsapp_url, params.takeover_on_conflict, params.idle_timeout, params.phone_number,
                   params.proxy)

    def merged(self, new: SessionOptions) -> SessionOptions:
        """These options with the fields ``new`` sets (a field left None keeps its value)."""
        changes = {f: getattr(new, f) for f in new.__struct_fields__ if getattr(new, f) is not None}
        return msgspec.structs.replace(self, **changes)


@dataclass(frozen=True)
class Settings:
    """A session's options with the daemon's configuration filled in."""

    whatsapp_url: str
    takeover_on_conflict: bool
    idle_timeout: float | None  # stop when connected and untouched this long; None: never
    phone_number: str  # "": link by QR
    proxy: Proxy | None  # None: direct

    @property
    def links_by_code(self) -> bool:
        return bool(self.phone_number)


def resolve(options: SessionOptions, config: Config) -> Settings:
    """What the session uses now: its own options, else the daemon's configuration."""
    takeover = options.takeover_on_conflict
    return Settings(
        whatsapp_url=options.whatsapp_url or config.whatsapp_url,
        takeover_on_conflict=config.takeover_on_conflict if takeover is None else takeover,
        idle_timeout=options.idle_timeout or config.connected_idle_timeout,
        phone_number=options.phone_number or "",
        # "" is a choice ("direct"), unlike None: it does not fall back to the daemon's proxy
        proxy=parse_proxy((config.proxy or "") if options.proxy is None else options.proxy),
    )
