"""A session's proxy: the URL forms ``connect`` takes, and how they are shown.

Accepted: ``http://[user:password@]host:port``, ``https://[user:password@]host:port``
and ``socks5://host:port``; ``""`` means "direct". The password is a secret: only
:attr:`Proxy.password` holds it. ``str()``, ``repr()``, :attr:`Proxy.masked` and
every error :func:`parse_proxy` raises leave it out (an error never quotes the
text it was given), so a proxy can be logged, shown and put in a reply.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final
from urllib.parse import unquote, urlsplit

SCHEMES: Final = ("http", "https", "socks5")
MASK: Final = "***"

_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?\Z")
_UNPRINTABLE = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True)
class Proxy:
    scheme: str  # http, https or socks5
    host: str  # as written in a URL: an IPv6 address in brackets
    port: int
    username: str = ""
    password: str = field(default="", repr=False)

    @property
    def address(self) -> str:
        """``host:port``: what a message about this proxy may name."""
        return f"{self.host}:{self.port}"

    @property
    def server(self) -> str:
        """``scheme://host:port``, without credentials (Chromium's ``--proxy-server``)."""
        return f"{self.scheme}://{self.address}"

    @property
    def has_credentials(self) -> bool:
        return bool(self.username or self.password)

    @property
    def masked(self) -> str:
        """The URL with the password replaced by ``***`` (e.g. ``http://alice:***@10.0.0.5:3128``)."""
        if not self.has_credentials:
            return self.server
        secret = f":{MASK}" if self.password else ""
        return f"{self.scheme}://{self.username}{secret}@{self.address}"

    def __str__(self) -> str:
        return self.masked


def _fail(what: str) -> ValueError:
    return ValueError(f"proxy: {what}")


@lru_cache(maxsize=1024)
def parse_proxy(text: str) -> Proxy | None:
    """The proxy ``text`` names, None for ``""`` (direct). Raises ValueError saying
    what is wrong (never quoting ``text``, which may hold a password)."""
    if text == "":
        return None
    if _UNPRINTABLE.search(text):
        raise _fail("must not contain whitespace or control characters")
    scheme, sep, _ = text.partition("://")
    if not sep:
        raise _fail("expected scheme://host:port, with scheme http, https or socks5")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        shown = scheme if len(scheme) <= 16 and scheme.isalnum() else "given"
        raise _fail(f"the {shown} scheme is not supported: use http, https or socks5")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise _fail("the port must be a number from 1 to 65535, and an IPv6 host must be in brackets") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise _fail("a proxy URL has no path, query or fragment: scheme://host:port")
    host = parts.hostname or ""
    if not host:
        raise _fail("no host: expected scheme://host:port")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _fail("the host is not a valid IPv6 address") from None
        host = f"[{host}]"
    elif not _HOSTNAME.match(host):
        raise _fail("the host must be a name or an IP address (letters, digits, dots and dashes)")
    if port is None:
        raise _fail(f"no port: expected {scheme}://host:port")
    if not 1 <= port <= 65535:
        raise _fail("the port must be a number from 1 to 65535")
    username = unquote(parts.username or "")
    password = unquote(parts.password or "")
    if scheme == "socks5" and (username or password or "@" in parts.netloc):
        raise _fail("a socks5 proxy takes no credentials (Chromium cannot send them): use socks5://host:port")
    if password and not username:
        raise _fail("a password needs a user name: scheme://user:password@host:port")
    return Proxy(scheme, host, port, username, password)


def masked(text: str | None) -> str | None:
    """``text`` as a proxy URL to show (password masked); None when direct or unset."""
    proxy = parse_proxy(text) if text else None
    return proxy.masked if proxy is not None else None
