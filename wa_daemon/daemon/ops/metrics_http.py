"""``/metrics`` and ``/health`` over HTTP/1.1, for a Prometheus scrape.

h11 parses and frames the HTTP (sans-I/O); this module only moves bytes
between a trio stream and an h11 connection, so one :class:`MetricsHttp` serves
a TCP listener (``metrics_listen``) or a Unix socket (``metrics_socket``) alike.
Who may see what is not decided here: whoever builds a :class:`MetricsHttp`
gives it, per accepted connection, the exposition that peer may read
(``daemon/metrics_listeners.py``).

Not prometheus_client's threaded server: the collectors read the sessions,
which only the event loop's thread may touch. One request per connection, heads
capped, slow clients timed out, connections at once capped.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

import h11
import trio

from ...protocol import Health

# The text format generate_latest writes; every Prometheus 2.x parses it.
# (prometheus_client's CONTENT_TYPE_LATEST names 1.0.0 in recent releases.)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_HEAD = 8192  # a request line and headers longer than this get 431
REQUEST_TIMEOUT = 10.0  # a connection's whole life: request, scrape and answer
MAX_CONNECTIONS = 16  # per listener; one more gets 503 at once
_RECEIVE = 4096

Exposition = Callable[[], str]  # one scrape's text, already filtered for the peer that asks


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _text(status: int, message: str, *headers: tuple[str, str]) -> Reply:
    return Reply(status, "text/plain", message.encode() + b"\n", headers)


class MetricsHttp:
    """One listener's HTTP: ``exposition_for`` gives each accepted connection the
    metrics text its peer may read."""

    def __init__(
        self, exposition_for: Callable[[trio.SocketStream], Exposition], health: Callable[[], Awaitable[Health]]
    ) -> None:
        self._exposition_for = exposition_for
        self._health = health
        self._slots = trio.Semaphore(MAX_CONNECTIONS)

    async def serve(self, listeners: Sequence[trio.SocketListener]) -> None:
        await trio.serve_listeners(self._accepted, list(listeners))

    async def _accepted(self, stream: trio.SocketStream) -> None:
        await self.exchange(stream, self._exposition_for(stream))

    async def exchange(self, stream: trio.abc.Stream, exposition: Exposition) -> None:
        """Answer one request on ``stream``, then close it; within the caps."""
        async with stream:
            with trio.move_on_after(REQUEST_TIMEOUT):
                try:
                    if self._slots.value == 0:
                        await _send(stream, h11.Connection(h11.SERVER), _text(503, "too many connections"))
                        return
                    async with self._slots:
                        await self._exchange(stream, exposition)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the scraper went away

    async def _exchange(self, stream: trio.abc.Stream, exposition: Exposition) -> None:
        conn = h11.Connection(h11.SERVER)
        request = await _receive_request(stream, conn)
        if isinstance(request, h11.Request):
            reply = await self.answer(request.method, request.target, exposition)
            await _send(stream, conn, reply, head_only=request.method == b"HEAD")
        elif request is not None:
            await _send(stream, conn, request)

    async def answer(self, method: bytes, target: bytes, exposition: Exposition) -> Reply:
        if method not in (b"GET", b"HEAD"):
            return _text(405, "method not allowed", ("Allow", "GET, HEAD"))
        path = target.split(b"?", 1)[0]
        if path == b"/metrics":
            return Reply(200, CONTENT_TYPE, exposition().encode())
        if path == b"/health":
            report = await self._health()
            body = json.dumps(
                {"healthy": report.healthy,
                 "checks": [{"name": c.name, "ok": c.ok, "message": c.message} for c in report.checks]}
            ).encode()
            return Reply(200 if report.healthy else 503, "application/json", body)
        return _text(404, "not found: try /metrics or /health")


async def _receive_request(stream: trio.abc.Stream, conn: h11.Connection) -> h11.Request | Reply | None:
    """The request's head; a Reply for a malformed or oversized one; None when
    the peer closed before sending one."""
    # Counted here: h11's max_incomplete_event_size only applies while the head is
    # still incomplete, so a larger head arriving in a few chunks would pass it.
    received = 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return _text(exc.error_status_hint, "bad request")
        if event is h11.NEED_DATA:
            if received >= MAX_HEAD:
                return _text(431, "request head too large")
            data = await stream.receive_some(min(_RECEIVE, MAX_HEAD - received))
            received += len(data)
            conn.receive_data(bytes(data))  # b"" at EOF: h11 says what that means
        elif isinstance(event, h11.Request):
            # h11 parses any HTTP/x.y; only 1.x is spoken here.
            return event if event.http_version.startswith(b"1.") else _text(400, "bad request")
        else:
            return None


async def _send(stream: trio.abc.Stream, conn: h11.Connection, reply: Reply, *, head_only: bool = False) -> None:
    headers = [
        ("Content-Type", reply.content_type),
        ("Content-Length", str(len(reply.body))),
        ("Connection", "close"),
        *reply.headers,
    ]
    events: list[h11.Event] = [
        h11.Response(status_code=reply.status, headers=headers, reason=HTTPStatus(reply.status).phrase)
    ]
    if not head_only:  # h11 knows a HEAD answer has no body, and refuses one
        events.append(h11.Data(data=reply.body))
    events.append(h11.EndOfMessage())
    out = bytearray()
    for event in events:
        out += conn.send(event) or b""  # None only for ConnectionClosed, never sent here
    await stream.send_all(out)
