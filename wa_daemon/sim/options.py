"""Settings of one simulator: where it listens and how its WhatsApp Web behaves."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

RefFormat = Literal["plain", "platform", "url"]
REF_FORMATS: tuple[RefFormat, ...] = ("plain", "platform", "url")
PageKind = Literal["modules", "legacy"]
PAGE_KINDS: tuple[PageKind, ...] = ("modules", "legacy")
# How heavy the logged-in app is: "light", one placeholder chat (the page as it always
# was); "realistic", a busy account's WhatsApp Web (chat list, open chat, message and
# contact collections, messages arriving): sizes and sources in docs/simulator.md.
Weight = Literal["light", "realistic"]
WEIGHTS: tuple[Weight, ...] = ("light", "realistic")
# The languages the module page is translated into (its texts live in static/modules.js).
LOCALES: tuple[str, ...] = ("en", "de", "pt-BR")
DEFAULT_WEB_VERSION = "2.3000.1031980585"

# A version goes into an HTML attribute and a module id into a script: both are kept
# to characters that need no escaping anywhere, as real ones do.
_WEB_VERSION = re.compile(r"[0-9][0-9A-Za-z.\-]{0,63}")
_MODULE_ID = re.compile(r"[A-Za-z_$][\w$]{0,99}")


@dataclass(frozen=True, kw_only=True)
class SimOptions:
    """Every duration of the page's behaviour is in simulated seconds: multiplied by
    ``time_scale`` before it is used, so 0.05 turns the 60 s first ref into 3 s.
    ``page_grace`` is plumbing, not WhatsApp behaviour, and is never scaled."""

    host: str = "127.0.0.1"
    port: int = 0
    time_scale: float = 1.0
    loading_time: float = 3.0
    first_qr_ttl: float = 60.0
    qr_ttl: float = 20.0
    qr_refs_per_cycle: int = 6
    ref_format: RefFormat = "plain"
    ref_platform: str = "WEB"
    # A pairing code's life; WhatsApp's is about three minutes (whatsapp-web.js refreshes every 180 s).
    code_ttl: float = 180.0
    page: PageKind = "modules"
    locale: str = "en"
    web_version: str = DEFAULT_WEB_VERSION
    drop_modules: tuple[str, ...] = ()
    weight: Weight = "light"
    # A page whose event stream is gone this long is closed: long enough to ride out
    # EventSource's automatic reconnect, short enough that a killed browser frees its
    # refs and lets its device report "no page" soon after.
    page_grace: float = 10.0

    def __post_init__(self) -> None:
        def positive(name: str, value: float, *, zero_ok: bool = False) -> None:
            if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
                raise ValueError(f"{name} must be {'>= 0' if zero_ok else '> 0'}, got {value!r}")

        positive("time_scale", self.time_scale)
        positive("loading_time", self.loading_time, zero_ok=True)
        positive("first_qr_ttl", self.first_qr_ttl)
        positive("qr_ttl", self.qr_ttl)
        positive("code_ttl", self.code_ttl)
        positive("page_grace", self.page_grace)
        if self.qr_refs_per_cycle < 1:
            raise ValueError(f"qr_refs_per_cycle must be >= 1, got {self.qr_refs_per_cycle!r}")
        if self.ref_format not in REF_FORMATS:
            raise ValueError(f"ref_format must be one of {', '.join(REF_FORMATS)}, got {self.ref_format!r}")
        if not self.ref_platform or "," in self.ref_platform:
            raise ValueError(f"ref_platform must be a non-empty string without commas, got {self.ref_platform!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port!r}")
        self._check_page()

    def _check_page(self) -> None:
        if self.page not in PAGE_KINDS:
            raise ValueError(f"page must be one of {', '.join(PAGE_KINDS)}, got {self.page!r}")
        if self.locale not in LOCALES:
            raise ValueError(f"locale must be one of {', '.join(LOCALES)}, got {self.locale!r}")
        if not _WEB_VERSION.fullmatch(self.web_version):
            raise ValueError(f"web_version must look like 2.3000.1031980585, got {self.web_version!r}")
        if isinstance(self.drop_modules, str):  # a lone id would be dropped letter by letter
            raise ValueError("drop_modules must be a sequence of module ids, not a string")
        for module_id in self.drop_modules:
            if not isinstance(module_id, str) or not _MODULE_ID.fullmatch(module_id):
                raise ValueError(f"drop_modules: not a module id: {module_id!r}")
        object.__setattr__(self, "drop_modules", tuple(self.drop_modules))  # a list from a caller: keep it hashable
        if self.weight not in WEIGHTS:
            raise ValueError(f"weight must be one of {', '.join(WEIGHTS)}, got {self.weight!r}")
        if self.weight != "light" and self.page != "modules":
            raise ValueError(f"weight {self.weight} needs the module page (--page modules)")

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale
