"""Pinning the WhatsApp Web version: serve a cached ``index.html`` for the page's URL.

WhatsApp Web is one HTML shell naming the bundles of its version. With
``web_version`` set, a browser whose cache holds ``<version>.html`` gets that shell
for the WhatsApp URL (the CDP Fetch domain answers the document request; nothing
else is intercepted), so the page runs the pinned version's code. Without it, the
shell the page really loads is kept in memory and written to the cache once the
session reaches ``connected`` (the version is known then, from ``Debug.VERSION``),
as whatsapp-web.js's ``webVersionCache`` does. Requests to WhatsApp's update check
are refused while pinned, so the page does not reload itself to the newest version.

Pinning only buys time: WhatsApp can answer ``DEPRECATED_VERSION`` or log a device
out (``client_version_outdated``) for an old version.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from ..ops.log import get_logger

log = get_logger("chromium")

# A version as WhatsApp writes it (2.3000.1031980585): also what a cache file is named after.
VERSION_RE = re.compile(r"^[0-9]+(?:\.[0-9]+){1,3}(?:-[A-Za-z0-9]+)?\Z")
# The page's own update check (wppconnect aborts these too).
UPDATE_CHECK_PATTERN = "*check-update*"
# Cache files kept, newest first: enough to pin back a few releases.
KEEP_VERSIONS = 10


def cache_file(cache_dir: Path, version: str) -> Path:
    if not VERSION_RE.match(version):
        raise ValueError(f"not a WhatsApp Web version: {version!r}")
    return cache_dir / f"{version}.html"


def read_cached(cache_dir: Path, version: str) -> bytes | None:
    try:
        return cache_file(cache_dir, version).read_bytes()
    except OSError:
        return None


def write_cached(cache_dir: Path, version: str, html: bytes) -> Path:
    """Write atomically (a reader never sees half a file), 0600, and prune old versions."""
    target = cache_file(cache_dir, version)
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(html)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    files = sorted(cache_dir.glob("*.html"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[KEEP_VERSIONS:]:
        with contextlib.suppress(OSError):
            old.unlink()
    return target


class VersionPin:
    """The Fetch-domain wiring of one page. Callbacks run on pyppeteer's asyncio loop."""

    def __init__(self, url: str, cache_dir: Path, version: str | None) -> None:
        self.url = url.split("#")[0]
        self.cache_dir = cache_dir
        self.version = version
        self.served: bytes | None = read_cached(cache_dir, version) if version else None
        self.loaded: bytes | None = None  # the live shell this page loaded, to cache later
        self._client: Any = None

    @property
    def pinned(self) -> bool:
        """The cached shell of the pinned version is served to this page."""
        return self.served is not None

    async def attach(self, client: Any) -> None:
        """(asyncio) Enable interception of the WhatsApp document (and the update check when pinned)."""
        self._client = client
        stage = "Request" if self.pinned else "Response"
        patterns = [{"urlPattern": self.url + "*", "resourceType": "Document", "requestStage": stage}]
        if self.version:
            patterns.append({"urlPattern": UPDATE_CHECK_PATTERN, "requestStage": "Request"})
        client.on("Fetch.requestPaused", self._on_paused)
        await client.send("Fetch.enable", {"patterns": patterns})

    def _on_paused(self, event: dict[str, Any]) -> None:
        asyncio.ensure_future(self._answer(event))

    async def _answer(self, event: dict[str, Any]) -> None:
        client, rid = self._client, event["requestId"]
        url = event.get("request", {}).get("url", "")
        try:
            if "check-update" in url and self.version:
                await client.send("Fetch.failRequest", {"requestId": rid, "errorReason": "BlockedByClient"})
            elif "responseStatusCode" in event:  # the live shell: keep it, let it through
                if event["responseStatusCode"] == 200:
                    body = await client.send("Fetch.getResponseBody", {"requestId": rid})
                    raw = body.get("body", "")
                    self.loaded = base64.b64decode(raw) if body.get("base64Encoded") else raw.encode()
                await client.send("Fetch.continueRequest", {"requestId": rid})
            elif self.served is not None:
                await client.send(
                    "Fetch.fulfillRequest",
                    {
                        "requestId": rid,
                        "responseCode": 200,
                        "responseHeaders": [
                            {"name": "Content-Type", "value": "text/html; charset=utf-8"},
                            {"name": "Cache-Control", "value": "no-store"},
                        ],
                        "body": base64.b64encode(self.served).decode(),
                    },
                )
            else:
                await client.send("Fetch.continueRequest", {"requestId": rid})
        except Exception as exc:  # the page went away mid-request: nothing to answer
            log.debug("pin_answer_failed", error=f"{type(exc).__name__}: {exc}")

    def remember(self, version: str | None) -> Path | None:
        """Cache the live shell under the version the connected page reports."""
        if self.pinned or self.loaded is None or not version or not VERSION_RE.match(version):
            return None
        if read_cached(self.cache_dir, version) == self.loaded:
            return None
        return write_cached(self.cache_dir, version, self.loaded)
