"""The optional ``/metrics`` HTTP listener (``metrics_listen``) for a Prometheus scrape.

A few lines of HTTP/1.1 on trio rather than prometheus_client's threaded
server: the collectors read the sessions, which only the event loop's thread
may touch. One request per connection, heads capped, slow clients timed out.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import trio

from ...protocol import Health
from .config import parse_listen
from .log import get_logger

log = get_logger("http")

# The text format generate_latest writes; every Prometheus 2.x parses it.
# (prometheus_client's CONTENT_TYPE_LATEST names 1.0.0 in recent releases.)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_HEAD = 8192
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 16


class MetricsHttp:
    def __init__(self, listen: str, exposition: Callable[[], str], health: Callable[[], Awaitable[Health]]) -> None:
        self.host, self.port = parse_listen(listen)
        self._exposition = exposition
        self._health = health
        self._slots = trio.Semaphore(MAX_CONNECTIONS)

    async def run(self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        addresses = [listener.socket.getsockname() for listener in listeners]
        log.info("metrics_listening", addresses=[f"{a[0]}:{a[1]}" for a in addresses])
        task_status.started(listeners)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self._slots.value == 0:
                await self._send(stream, 503, "text/plain", b"too many connections\n")
                return
            async with self._slots:
                with trio.move_on_after(REQUEST_TIMEOUT):
                    try:
                        await self._serve(stream)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass  # the scraper went away

    async def _serve(self, stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            head += chunk
            if len(head) > MAX_HEAD:
                await self._send(stream, 431, "text/plain", b"request head too large\n")
                return
        request_line = head.split(b"\n", 1)[0].strip().decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._send(stream, 400, "text/plain", b"bad request\n")
            return
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            await self._send(stream, 405, "text/plain", b"method not allowed\n", extra="Allow: GET, HEAD\r\n")
            return
        if target == "/metrics":
            body = self._exposition().encode()
            await self._send(stream, 200, CONTENT_TYPE, body, head_only=method == "HEAD")
        elif target == "/health":
            report = await self._health()
            body = json.dumps(
                {"healthy": report.healthy, "checks": [{"name": c.name, "ok": c.ok, "message": c.message}
                                                       for c in report.checks]}
            ).encode()
            await self._send(stream, 200 if report.healthy else 503, "application/json", body,
                             head_only=method == "HEAD")
        else:
            await self._send(stream, 404, "text/plain", b"not found: try /metrics or /health\n")

    @staticmethod
    async def _send(
        stream: trio.SocketStream, code: int, ctype: str, body: bytes, *, head_only: bool = False, extra: str = ""
    ) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large", 503: "Service Unavailable"}[code]
        head = (
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n{extra}\r\n"
        ).encode()
        await stream.send_all(head if head_only else head + body)
