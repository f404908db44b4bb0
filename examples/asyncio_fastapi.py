"""A FastAPI app (asyncio) in front of wa-daemon: one shared AsyncClient for every request.

    pip install wa-daemon fastapi uvicorn
    WA_DAEMON_SOCKET=/run/wa-daemon/wa-daemon.sock uvicorn asyncio_fastapi:app --app-dir examples

Routes:

    POST /sessions/{id}/connect      start (or keep) a session; its status
    POST /sessions/{id}/disconnect   stop its browser, keep its login
    GET  /sessions/{id}              its status
    GET  /sessions/{id}/qr           the QR to scan, as JSON (404 when there is none)
    GET  /sessions/{id}/qr.png       the same QR as a PNG
    GET  /sessions/{id}/events       its state as Server-Sent Events (?until=connected&until=failed)
    GET  /healthz                    200 when the daemon answers, 503 otherwise

Daemon errors become HTTP statuses in one exception handler: rate_limited 429 with
Retry-After, not_found 404, invalid_argument 422, busy and limit_exceeded 409,
daemon unreachable or shutting down 503, no answer within the client's timeout 504.

The lifespan opens the shared client in a task of its own (``DaemonLink``), which
reopens it when the daemon restarts, so the app starts and keeps serving (with 503s)
while the daemon is away.
"""

from __future__ import annotations

import io
import logging
import math
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated, Any

import anyio
import msgspec
import segno
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from wa_daemon import (
    AsyncClient,
    Busy,
    ConnectionLost,
    DaemonUnreachable,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    RateLimited,
    State,
    Unavailable,
    WaDaemonError,
)

log = logging.getLogger("wa_example")


class DaemonLink:
    """Owns the app's one ``AsyncClient`` and reopens it when the daemon restarts.

    An ``AsyncClient`` lives inside ``async with``, entered and left by the same task,
    and a lost connection fails every later call on it (``ConnectionLost``). So one
    long-lived task holds the client, checks it with a ``ping`` every
    ``ping_interval`` seconds (or at once when a request reports the loss), and
    opens a new one with capped exponential backoff. Requests borrow ``client``.
    """

    def __init__(self, socket_path: str | None = None, *, ping_interval: float = 5.0) -> None:
        self.socket_path = socket_path
        self.ping_interval = ping_interval
        self.client: AsyncClient | None = None
        self._lost = anyio.Event()
        self._attached = anyio.Event()

    def get(self) -> AsyncClient:
        if self.client is None:
            raise DaemonUnreachable("wa-daemon is not reachable now; retry shortly")
        return self.client

    def report_lost(self) -> None:
        self._lost.set()

    async def wait_attached(self, timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            await self._attached.wait()
        return self.client is not None

    async def run(self) -> None:
        delay = 0.2
        while True:
            try:
                async with AsyncClient(self.socket_path, timeout=30, client_name="fastapi-example") as wa:
                    self._lost = anyio.Event()
                    self.client = wa
                    self._attached.set()
                    delay = 0.2
                    log.info("attached to wa-daemon at %s", wa.socket_path)
                    while True:
                        with anyio.move_on_after(self.ping_interval):
                            await self._lost.wait()
                        await wa.ping()  # raises ConnectionLost once the daemon is gone
                        if self._lost.is_set():
                            self._lost = anyio.Event()  # a false alarm: the connection is fine
            except (Unavailable, TimeoutError) as exc:  # DaemonUnreachable, ConnectionLost; no answer in 30 s
                log.warning("wa-daemon unavailable (%s); retrying in %.1f s", str(exc) or "timeout", delay)
            finally:
                self.client = None
            await anyio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 10.0)


class MsgspecJSON(JSONResponse):
    """The client's results are msgspec structs: encode them with msgspec (datetimes as ISO 8601)."""

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


def error_status(exc: WaDaemonError) -> int:
    if isinstance(exc, RateLimited):
        return 429
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, InvalidArgument):
        return 422
    if isinstance(exc, (Busy, LimitExceeded)):
        return 409
    if isinstance(exc, Unavailable):  # DaemonUnreachable, ConnectionLost, shutting down
        return 503
    return 502  # internal, protocol_error, codes newer than this client


def shared_client(request: Request) -> AsyncClient:
    """The dependency every route takes: the app's one client, or 503 while the daemon is away."""
    link: DaemonLink = request.app.state.link
    return link.get()


# At module level: with postponed annotations, FastAPI resolves them in the module's globals.
Wa = Annotated[AsyncClient, Depends(shared_client)]


def create_app(socket_path: str | None = None) -> FastAPI:
    """The app; ``socket_path`` None means ``$WA_DAEMON_SOCKET`` or the default path."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        link = app.state.link = DaemonLink(socket_path)
        async with anyio.create_task_group() as tg:
            tg.start_soon(link.run)
            # Give the first requests a connected client, but start anyway if the daemon is down.
            await link.wait_attached(2.0)
            yield
            tg.cancel_scope.cancel()

    app = FastAPI(title="wa-daemon example", lifespan=lifespan)

    @app.exception_handler(WaDaemonError)
    async def daemon_error(request: Request, exc: WaDaemonError) -> Response:
        if isinstance(exc, ConnectionLost):
            request.app.state.link.report_lost()
        headers = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        body = {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
        return MsgspecJSON(body, status_code=error_status(exc), headers=headers)

    @app.exception_handler(TimeoutError)
    async def daemon_timeout(request: Request, exc: TimeoutError) -> Response:
        # AsyncClient(timeout=30): a call that got no answer in time (anyio's fail_after).
        body = {"error": {"code": "timeout", "message": "wa-daemon did not answer in time", "details": {}}}
        return MsgspecJSON(body, status_code=504)

    @app.get("/healthz")
    async def healthz(wa: Wa) -> Response:
        pong = await wa.ping()
        return MsgspecJSON({"daemon": "ok", "server_time": pong.server_time})

    @app.post("/sessions/{session}/connect")
    async def connect(session: str, wa: Wa) -> Response:
        # Answers at once with the status (usually "starting"); follow /events for the rest.
        return MsgspecJSON(await wa.connect(session))

    @app.post("/sessions/{session}/disconnect")
    async def disconnect(session: str, wa: Wa) -> Response:
        return MsgspecJSON(await wa.disconnect(session))

    @app.get("/sessions/{session}")
    async def status(session: str, wa: Wa) -> Response:
        return MsgspecJSON(await wa.status(session))

    @app.get("/sessions/{session}/qr")
    async def qr(session: str, wa: Wa) -> Response:
        # A login credential: serve it only to whoever is allowed to link this session.
        code = await wa.qr(session)  # NotFound (404) unless the session is waiting_qr
        return MsgspecJSON(code, headers={"Cache-Control": "no-store"})

    @app.get("/sessions/{session}/qr.png")
    async def qr_png(session: str, wa: Wa, scale: Annotated[int, Query(ge=1, le=20)] = 8) -> Response:
        code = await wa.qr(session)
        buf = io.BytesIO()
        segno.make(code.data, micro=False).save(buf, kind="png", scale=scale)
        return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/sessions/{session}/events")
    async def events(
        session: str,
        wa: Wa,
        until: Annotated[list[State] | None, Query()] = None,
        timeout: Annotated[float, Query(gt=0, le=86400)] = 300.0,
    ) -> StreamingResponse:
        # The stream is opened here and closed by the response's generator: the exit
        # stack carries its `async with` from one to the other.
        opened = AsyncExitStack()
        stream = await opened.enter_async_context(wa.watch(session, until=until or [], timeout=timeout))
        # The first message is the snapshot, or the error (not_found, invalid_argument...):
        # read it before the response starts, so an error is still an HTTP status.
        try:
            first = await anext(stream, None)
        except BaseException:
            await opened.aclose()
            raise

        def frame(name: object, body: Any) -> bytes:
            # name: the event's wire tag (snapshot, state, qr, session_error), or ours (end, error)
            return b"event: " + str(name).encode() + b"\ndata: " + msgspec.json.encode(body) + b"\n\n"

        async def sse() -> AsyncIterator[bytes]:
            # When the HTTP client goes away, Starlette cancels this generator; leaving
            # `async with` then sends `cancel` for the stream to the daemon.
            async with opened:
                try:
                    if first is not None:
                        yield frame(first.__struct_config__.tag, first)
                    async for event in stream:
                        yield frame(event.__struct_config__.tag, event)
                except WaDaemonError as exc:  # e.g. ConnectionLost: the daemon went away mid-stream
                    yield frame("error", {"code": exc.code, "message": exc.message})
                    return
            if stream.end is not None:  # until, timeout, deleted or shutdown
                yield frame("end", {"reason": stream.end.reason, "status": stream.end.status})

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    return app


app = create_app()
