"""The simulator's HTTP side: the page, the page's own API, and the control API.

A small hand-written ASGI app served by hypercorn on trio. Routes:

    GET  /                                   the page: the module page, or the legacy one (--page legacy);
                                             the "update your browser" page for HeadlessChrome
    GET  /__sim__/static/{name}              its scripts and style
    POST /__sim__/pages                      a page load registers itself: {"token"} -> {"page", "view"}
    GET  /__sim__/pages[/{id}]               pages and their views, for people and tests
    GET  /__sim__/pages/{id}/events          Server-Sent Events: the page's whole view on every change
    POST /__sim__/pages/{id}/reload|take-over|logout   clicks on the page
    POST /__sim__/pages/{id}/pairing-code    startAltLinkingFlow: {"phone", "notify"} -> {"code", ...}
    POST /__sim__/pages/{id}/state           fault: {"state": NAME | null} pins Socket.state
    POST /__sim__/scan                       the phone presents a QR payload
    POST /__sim__/pair                       the phone's owner types a pairing code: {"phone", "code"}
    GET  /__sim__/devices[/{id}]             linked devices
    POST /__sim__/devices/{id}/logout|conflict|offline|online|hang|state   faults
    POST /__sim__/devices/{id}/incoming      the phone side of a chat: {"from": "<number>", "text"} to the device
    GET  /__sim__/devices/{id}/outbox        what the device sent, with its ack
    POST /__sim__/devices/{id}/read          the recipients read what the device sent (ack 3)
    POST /__sim__/pages/{id}/send            addAndSendMsgToChat: {"id", "to", "text"} -> the outbox entry
    POST /__sim__/pages/{id}/received        the page took these incoming messages: {"ids": [...]}
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope

from .engine import SimEngine
from .model import USER_INITIATED
from .options import SimOptions
from .records import SimError

log = logging.getLogger("wa_daemon.sim")

MAX_BODY = 64 * 1024
# Comments on an idle event stream: proxies and the browser keep it open, and a
# vanished peer is noticed when a write fails.
SSE_PING_INTERVAL = 15.0
SSE_RETRY_MS = 1000

_STATIC_TYPES = {
    "modules.js": "text/javascript; charset=utf-8",
    "legacy.js": "text/javascript; charset=utf-8",
    "sim.css": "text/css; charset=utf-8",
}


def _static(name: str) -> bytes:
    return (files("wa_daemon.sim") / "static" / name).read_bytes()


def page_html(options: SimOptions) -> bytes:
    """The page served at ``/``: the legacy page as it is, or the module page's shell with
    its language, web version, device platform and dropped modules filled in."""
    if options.page == "legacy":
        return _static("legacy.html")
    fields = {
        "{{LANG}}": options.locale,
        "{{WEB_VERSION}}": options.web_version,
        "{{DROP_MODULES}}": ",".join(options.drop_modules),
        "{{PLATFORM}}": options.ref_platform,
        "{{WEIGHT}}": options.weight,
    }
    text = _static("modules.html").decode()
    for placeholder, value in fields.items():
        text = text.replace(placeholder, html.escape(value))
    return text.encode()


def fingerprint(secret: str) -> str:
    """What the log may say about a credential (a QR payload, a pairing code): enough to
    tell two apart, nothing to use."""
    return hashlib.sha256(secret.encode()).hexdigest()[:8]


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def send(self, send: ASGISendCallable) -> None:
        headers = [
            (b"content-type", self.content_type.encode()),
            (b"content-length", str(len(self.body)).encode()),
            (b"cache-control", b"no-store"),
            *self.headers,
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data, separators=(",", ":")).encode() + b"\n", "application/json")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        if not self.body.strip():
            return {}
        try:
            data = json.loads(self.body)
        except ValueError as exc:
            raise HttpError(400, f"body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise HttpError(400, "body must be a JSON object")
        return data


Handler = Callable[[Request], Awaitable[Response]]


class SimApp:
    """The ASGI application; all state lives in the engine."""

    def __init__(self, engine: SimEngine) -> None:
        self.engine = engine
        self._page_html = page_html(engine.options)
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(r"/"), self._index),
            ("GET", re.compile(r"/__sim__/static/(?P<name>[\w.-]+)"), self._static),
            ("POST", re.compile(r"/__sim__/pages"), self._open_page),
            ("GET", re.compile(r"/__sim__/pages"), self._pages),
            ("GET", re.compile(r"/__sim__/pages/(?P<page>[\w-]+)"), self._page),
            ("POST", re.compile(r"/__sim__/pages/(?P<page>[\w-]+)/(?P<action>reload|take-over|logout)"), self._click),
            ("POST", re.compile(r"/__sim__/pages/(?P<page>[\w-]+)/pairing-code"), self._pairing_code),
            ("POST", re.compile(r"/__sim__/pages/(?P<page>[\w-]+)/state"), self._page_state),
            ("POST", re.compile(r"/__sim__/scan"), self._scan),
            ("POST", re.compile(r"/__sim__/pair"), self._pair),
            ("GET", re.compile(r"/__sim__/devices"), self._devices),
            ("GET", re.compile(r"/__sim__/devices/(?P<device>[\w-]+)"), self._device),
            (
                "POST",
                re.compile(r"/__sim__/devices/(?P<device>[\w-]+)/(?P<action>logout|conflict|offline|online|hang)"),
                self._fault,
            ),
            ("POST", re.compile(r"/__sim__/devices/(?P<device>[\w-]+)/state"), self._device_state),
            ("POST", re.compile(r"/__sim__/devices/(?P<device>[\w-]+)/incoming"), self._incoming),
            ("GET", re.compile(r"/__sim__/devices/(?P<device>[\w-]+)/outbox"), self._outbox),
            ("POST", re.compile(r"/__sim__/devices/(?P<device>[\w-]+)/read"), self._read),
            ("POST", re.compile(r"/__sim__/pages/(?P<page>[\w-]+)/send"), self._send),
            ("POST", re.compile(r"/__sim__/pages/(?P<page>[\w-]+)/received"), self._received),
        ]
        self._events_path = re.compile(r"/__sim__/pages/(?P<page>[\w-]+)/events")

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        else:  # websocket: nothing here speaks it
            await send({"type": "websocket.close", "code": 1003, "reason": "not supported"})

    async def _lifespan(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        path, method = scope["path"], scope["method"]
        try:
            events = self._events_path.fullmatch(path)
            if events:
                if method != "GET":
                    raise HttpError(405, "method not allowed", [(b"allow", b"GET")])
                await self._events(events["page"], receive, send)
                return
            handler, params = self._route(method, path)
            request = Request(
                method=method,
                path=path,
                query=parse_qs(scope["query_string"].decode("latin-1")),
                headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
                body=await _read_body(receive),
                params=params,
            )
            response = await handler(request)
        except SimError as exc:
            response = json_response({"error": str(exc)}, exc.status)
        except HttpError as exc:
            response = json_response({"error": str(exc)}, exc.status)
            response.headers.extend(exc.headers)
        await response.send(send)

    def _route(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed: list[str] = []
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match:
                if route_method == method:
                    return handler, match.groupdict()
                allowed.append(route_method)
        if allowed:
            raise HttpError(405, "method not allowed", [(b"allow", ", ".join(allowed).encode())])
        raise HttpError(404, f"no such path: {path}")

    # -- the page ------------------------------------------------------------------------

    async def _index(self, request: Request) -> Response:
        # WhatsApp Web turns away headless Chromium by its user agent; a driver must
        # present a normal desktop Chrome one, and this keeps it honest.
        if "HeadlessChrome" in request.headers.get("user-agent", ""):
            return Response(200, _static("update.html"), "text/html; charset=utf-8")
        return Response(200, self._page_html, "text/html; charset=utf-8")

    async def _static(self, request: Request) -> Response:
        name = request.params["name"]
        if name not in _STATIC_TYPES:
            raise HttpError(404, f"no such file: {name}")
        return Response(200, _static(name), _STATIC_TYPES[name])

    async def _open_page(self, request: Request) -> Response:
        token = request.json().get("token")
        if token is not None and not isinstance(token, str):
            raise HttpError(400, "token must be a string or null")
        page = self.engine.open_page(token)
        return json_response({"page": page.id, "view": self.engine.view(page.id)})

    async def _pages(self, request: Request) -> Response:
        return json_response(self.engine.pages())

    async def _page(self, request: Request) -> Response:
        return json_response(self.engine.view(request.params["page"]))

    async def _click(self, request: Request) -> Response:
        page_id, action = request.params["page"], request.params["action"]
        if action == "reload":
            self.engine.reload(page_id)
        elif action == "take-over":
            self.engine.take_over(page_id)
        else:
            device = self.engine.page_logout(page_id)
            log.info("device %s logged out from its page %s", device.id, page_id)
        return json_response(self.engine.view(page_id))

    async def _pairing_code(self, request: Request) -> Response:
        body = request.json()
        phone, notify = body.get("phone"), body.get("notify", True)
        if not isinstance(phone, str) or not isinstance(notify, bool):
            raise HttpError(400, 'body must be {"phone": "<digits>", "notify": true|false}')
        page_id = request.params["page"]
        pairing = self.engine.request_code(page_id, phone, notify=notify)
        log.info("page %s shows a pairing code (fingerprint %s)", page_id, fingerprint(pairing.code))
        view = self.engine.view(page_id)
        return json_response({"code": pairing.code, "expires_in": view["pairing"]["expires_in"], "view": view})

    async def _page_state(self, request: Request) -> Response:
        page_id = request.params["page"]
        self.engine.force_state(page_id, _state(request))
        return json_response(self.engine.view(page_id))

    async def _events(self, page_id: str, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        engine = self.engine
        engine.attach(page_id)  # raises NotFound before anything is sent: a plain 404
        try:
            headers = [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-store"),
                (b"x-accel-buffering", b"no"),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": f"retry: {SSE_RETRY_MS}\n\n".encode(), "more_body": True})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
                version = -1
                while True:
                    with trio.move_on_after(SSE_PING_INTERVAL):
                        view = await engine.wait_view(page_id, version)
                        if view is None:  # the page was closed: end the stream
                            break
                        version = view["version"]
                        data = json.dumps(view, separators=(",", ":"))
                        await send(
                            {
                                "type": "http.response.body",
                                "body": f"event: view\ndata: {data}\n\n".encode(),
                                "more_body": True,
                            }
                        )
                        continue
                    await send({"type": "http.response.body", "body": b": ping\n\n", "more_body": True})
                nursery.cancel_scope.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            engine.detach(page_id)

    # -- the phone and the control API -----------------------------------------------------

    async def _scan(self, request: Request) -> Response:
        text = request.body.decode("utf-8", "replace").strip()
        if request.headers.get("content-type", "").startswith("application/json") or text.startswith("{"):
            ref = request.json().get("ref")
            if not isinstance(ref, str):
                raise HttpError(400, 'JSON body must be {"ref": "<the QR text>"}')
            text = ref
        if not text:
            raise HttpError(400, 'body must be the QR text, or JSON {"ref": ...}')
        device = self.engine.scan(text)
        log.info("linked device %s to page %s", device.id, device.page_id)
        return json_response({"device": device.id, "page": device.page_id})

    async def _pair(self, request: Request) -> Response:
        body = request.json()
        phone, code = body.get("phone"), body.get("code")
        if not isinstance(phone, str) or not isinstance(code, str):
            raise HttpError(400, 'body must be {"phone": "<digits>", "code": "ABCD-EFGH"}')
        device = self.engine.pair(phone, code)
        log.info("linked device %s to page %s by pairing code", device.id, device.page_id)
        return json_response({"device": device.id, "page": device.page_id})

    async def _devices(self, request: Request) -> Response:
        return json_response(self.engine.devices())

    async def _device(self, request: Request) -> Response:
        return json_response(self.engine.device(request.params["device"]))

    async def _fault(self, request: Request) -> Response:
        device_id, action = request.params["device"], request.params["action"]
        engine = self.engine
        if action == "logout":
            reason = request.json().get("reason", USER_INITIATED)
            if not isinstance(reason, str):
                raise HttpError(400, 'reason must be a string, e.g. "user_initiated"')
            engine.logout(device_id, reason)
            log.info("device %s logged out from the phone (%s)", device_id, reason)
            return json_response({"device": device_id, "state": "logged_out", "reason": reason})
        if action == "conflict":
            engine.conflict(device_id)
        elif action == "offline":
            engine.offline(device_id, _duration(request))
        elif action == "online":
            engine.online(device_id)
        else:
            engine.hang(device_id)
        log.info("device %s: %s", device_id, action)
        return json_response(engine.device(device_id))

    async def _device_state(self, request: Request) -> Response:
        device_id = request.params["device"]
        page = self.engine.force_device_state(device_id, _state(request))
        log.info("device %s: Socket.state of page %s forced to %s", device_id, page.id, page.forced_state)
        return json_response(self.engine.device(device_id) | {"page_state": self.engine.view(page.id)["state"]})

    # -- conversations (chats.py); bodies are never logged, only ids and lengths ------------

    async def _incoming(self, request: Request) -> Response:
        body = request.json()
        sender, text = body.get("from"), body.get("text")
        if not isinstance(sender, str) or not isinstance(text, str):
            raise HttpError(400, 'body must be {"from": "<digits>", "text": "..."}')
        msg = self.engine.incoming(request.params["device"], sender, text)
        log.info("device %s: incoming message %s (%d characters)", request.params["device"], msg.id, len(text))
        return json_response(msg.json())

    async def _outbox(self, request: Request) -> Response:
        return json_response(self.engine.outbox(request.params["device"]))

    async def _read(self, request: Request) -> Response:
        device_id = request.params["device"]
        return json_response({"device": device_id, "read": self.engine.read(device_id)})

    async def _send(self, request: Request) -> Response:
        body = request.json()
        key, to, text = body.get("id"), body.get("to"), body.get("text")
        if not isinstance(key, str) or not isinstance(to, str) or not isinstance(text, str):
            raise HttpError(400, 'body must be {"id": "<message id>", "to": "<chat id>", "text": "..."}')
        sent = self.engine.send_message(request.params["page"], key, to, text)
        return json_response(sent.json())

    async def _received(self, request: Request) -> Response:
        ids = request.json().get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise HttpError(400, 'body must be {"ids": ["<message id>", ...]}')
        return json_response({"received": self.engine.received(request.params["page"], ids)})


def _state(request: Request) -> str | None:
    """The forced state of a state fault: a name, or null to end it."""
    body = request.json()
    if "state" not in body:
        raise HttpError(400, 'body must be {"state": "<NAME>"} or {"state": null}')
    state = body["state"]
    if state is not None and not isinstance(state, str):
        raise HttpError(400, "state must be a string or null")
    return state


def _duration(request: Request) -> float | None:
    """``duration`` (simulated seconds) from the JSON body or the query string; None: until online."""
    raw: Any = request.json().get("duration")
    if raw is None and "duration" in request.query:
        raw = request.query["duration"][-1]
    if raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise HttpError(400, f"duration must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise HttpError(400, f"duration must be > 0, got {raw!r}")
    return value


async def _read_body(receive: ASGIReceiveCallable) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(400, "client went away")
        if message["type"] != "http.request":
            continue
        size += len(message["body"])
        if size > MAX_BODY:
            raise HttpError(413, f"body larger than {MAX_BODY} bytes")
        chunks.append(message["body"])
        if not message["more_body"]:
            return b"".join(chunks)


async def _cancel_on_disconnect(receive: ASGIReceiveCallable, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _bind(host: str, port: int) -> socket.socket:
    """Bind here rather than in hypercorn so a taken port is a plain OSError from
    serve_simulator, raised before any task starts."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_simulator(
    options: SimOptions | None = None,
    *,
    engine: SimEngine | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the simulator until cancelled; ``task_status.started(url)`` gives its base URL.

    ``url = await nursery.start(serve_simulator, SimOptions(time_scale=0.01))``.
    Pass ``engine`` to inspect or drive the simulator in-process as well.
    """
    options = options or SimOptions()
    engine = engine or SimEngine(options)
    sock = await _bind(options.host, options.port)
    config = HypercornConfig()
    # hypercorn wraps the descriptor in a socket object of its own and closes it.
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("wa_daemon.sim.http")
    # Event streams never end by themselves; waiting for them on shutdown only delays it.
    config.graceful_timeout = 0.5
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        binds: list[str] = await nursery.start(partial(hypercorn_serve, SimApp(engine), config))
        task_status.started(binds[0])
