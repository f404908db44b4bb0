"""Settings of one simulator: where it listens and how its WhatsApp Web behaves."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

RefFormat = Literal["plain", "platform", "url"]
REF_FORMATS: tuple[RefFormat, ...] = ("plain", "platform", "url")


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
        positive("page_grace", self.page_grace)
        if self.qr_refs_per_cycle < 1:
            raise ValueError(f"qr_refs_per_cycle must be >= 1, got {self.qr_refs_per_cycle!r}")
        if self.ref_format not in REF_FORMATS:
            raise ValueError(f"ref_format must be one of {', '.join(REF_FORMATS)}, got {self.ref_format!r}")
        if not self.ref_platform or "," in self.ref_platform:
            raise ValueError(f"ref_platform must be a non-empty string without commas, got {self.ref_platform!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port!r}")

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale
