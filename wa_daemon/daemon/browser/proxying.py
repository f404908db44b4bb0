"""A browser behind the session's proxy: Chromium's flags, the credentials, the failures named.

Chromium takes the proxy on its command line but never credentials: an HTTP(S)
proxy's challenge (407) is answered through CDP's Fetch domain, on each target
the session opens, so the password is on no command line, in no environment and
in no log line. A challenge asked again for a request that got the credentials
means the proxy rejected them (some proxies, tinyproxy among them, answer wrong
credentials with a 401 instead of a second 407: any second challenge counts).
:func:`launch_failure` names what a failed navigation says about the proxy.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Final

from ...protocol import Reason
from ...proxy import Proxy
from ..ops.log import get_logger
from .base import LaunchError

log = get_logger("chromium")

# Net errors that say the proxy itself could not be used (connect refused, no route,
# a tunnel or a SOCKS connection it would not make), and those that say it wants
# credentials it did not get. Chromium's net_error_list.h.
UNREACHABLE_ERRORS: Final = frozenset({
    "ERR_PROXY_CONNECTION_FAILED",
    "ERR_TUNNEL_CONNECTION_FAILED",
    "ERR_SOCKS_CONNECTION_FAILED",
    "ERR_SOCKS_CONNECTION_HOST_UNREACHABLE",
    "ERR_NO_SUPPORTED_PROXIES",
    "ERR_PROXY_CERTIFICATE_INVALID",
    "ERR_PROXY_HTTP_1_1_REQUIRED",
    "ERR_MANDATORY_PROXY_CONFIGURATION_FAILED",
})
AUTH_ERRORS: Final = frozenset({
    "ERR_PROXY_AUTH_UNSUPPORTED",
    "ERR_PROXY_AUTH_REQUESTED",
    "ERR_PROXY_AUTH_REQUESTED_WITH_NO_CONNECTION",
    "ERR_UNEXPECTED_PROXY_AUTH",
    # A challenge nobody answered (no credentials given): WhatsApp's pages ask for none
    # of their own, so behind a proxy this is the proxy's.
    "ERR_INVALID_AUTH_CREDENTIALS",
})
_NET_ERROR = re.compile(r"net::(ERR_[A-Z0-9_]+)")
PROXY_AUTH_REQUIRED: Final = 407


def chromium_flags(proxy: Proxy | None) -> list[str]:
    """The flags that send every request through ``proxy``, loopback included (Chromium
    bypasses the proxy for localhost unless ``<-loopback>`` says otherwise)."""
    if proxy is None:
        return []
    return [f"--proxy-server={proxy.server}", "--proxy-bypass-list=<-loopback>"]


def launch_failure(proxy: Proxy | None, auth: ProxyAuth | None, error: str | None = None, *,
                   status: int | None = None) -> LaunchError | None:
    """The LaunchError naming a proxy failure of the first navigation, or None when
    there is no proxy or it is not the cause. ``error``: the navigation's error text
    (``net::ERR_...``); ``status``: the HTTP status the page got; ``auth``: whether
    the proxy asked again after it got the credentials."""
    if proxy is None:
        return None
    rejected = auth is not None and auth.rejected
    where = f"proxy {proxy.server}"  # the host and port, never the credentials
    code = _NET_ERROR.search(error or "")
    name = code.group(1) if code else ""
    if rejected or name in AUTH_ERRORS or status == PROXY_AUTH_REQUIRED:
        what = "rejected the credentials" if proxy.has_credentials else "asks for credentials and none were given"
        return LaunchError(f"{where} {what} ({name or PROXY_AUTH_REQUIRED})", Reason.PROXY_AUTH_FAILED)
    if name in UNREACHABLE_ERRORS:
        return LaunchError(f"{where} refused the connection or is unreachable ({name})", Reason.PROXY_UNREACHABLE)
    return None


class ProxyAuth:
    """Answers one browser's proxy challenges with the session's credentials, on every
    target it is attached to. Callbacks run on pyppeteer's asyncio loop."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.rejected = False  # the proxy asked again after it got the credentials
        self._answered: set[tuple[int, str]] = set()  # (client, request id) given the credentials

    async def attach(self, client: Any) -> None:
        """(asyncio) Pause the target's requests so its auth challenges come to us."""
        client.on("Fetch.requestPaused", lambda event: asyncio.ensure_future(self._resume(client, event)))
        client.on("Fetch.authRequired", lambda event: asyncio.ensure_future(self._answer(client, event)))
        await client.send("Fetch.enable", {"handleAuthRequests": True, "patterns": [{"urlPattern": "*"}]})

    def on_target(self, target: Any) -> None:
        """(asyncio, pyppeteer's ``targetcreated``) Another page or a worker of the browser
        answers the proxy's challenges too."""
        if target.type in ("page", "service_worker", "shared_worker"):
            asyncio.ensure_future(self._attach_target(target))

    async def _attach_target(self, target: Any) -> None:
        try:
            await self.attach(await target.createCDPSession())
        except Exception as exc:  # it closed before we got to it
            log.debug("proxy_auth_attach_failed", target=target.type, error=f"{type(exc).__name__}: {exc}")

    async def _resume(self, client: Any, event: dict[str, Any]) -> None:
        try:
            await client.send("Fetch.continueRequest", {"requestId": event["requestId"]})
        except Exception as exc:  # the target went away mid-request: nothing to answer
            log.debug("proxy_resume_failed", error=f"{type(exc).__name__}: {exc}")

    async def _answer(self, client: Any, event: dict[str, Any]) -> None:
        key = (id(client), event["requestId"])
        if key in self._answered:
            self.rejected = True
            log.warning("proxy_auth_rejected", proxy=self.proxy.server)
            response: dict[str, str] = {"response": "CancelAuth"}
        elif event.get("authChallenge", {}).get("source") == "Proxy":
            self._answered.add(key)
            response = {"response": "ProvideCredentials", "username": self.proxy.username,
                        "password": self.proxy.password}
        else:
            response = {"response": "Default"}  # a site's own login: not ours to answer
        try:
            await client.send("Fetch.continueWithAuth", {"requestId": event["requestId"],
                                                         "authChallengeResponse": response})
        except Exception as exc:
            log.debug("proxy_auth_answer_failed", error=f"{type(exc).__name__}: {exc}")
