"""A deterministic in-memory driver: no browser, the page contract played by a task.

Used by unit tests (under MockClock), benchmarks, load tests and
``wa-daemon --driver scripted``. Each "browser" runs a small script in the
driver's nursery: saved auth leads to loading then the app; otherwise a QR
cycle like WhatsApp Web's (first ref 60 s, five more of 20 s, then a reload
button). Tests and the ``simulate`` RPC act as the phone and as fate: scan,
logout, conflict, crash, connection loss, phone offline.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import trio

from ...protocol import HealthCheck
from ..ops.config import ScriptedConfig
from .auth_snapshot import SCRIPTED_LOGIN, SnapshotError, pack_files, unpack
from .base import (
    AppShown,
    BrowserGone,
    Conflict,
    LaunchError,
    LaunchOptions,
    Loading,
    LoggedOut,
    LoginRequired,
    MessageEvent,
    PageEvent,
    PageInfo,
    PageMessage,
    PairingError,
    PhoneOffline,
    QrExpired,
    QrShown,
    Refused,
    SendError,
    SentText,
    unwrapped_group,
)

_EVENT_BUFFER = 64
SCRIPTED_WEB_VERSION = "2.3000.0-scripted"
_CODE_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTVWXYZ"


def _fake_ref() -> str:
    """A ref shaped like WhatsApp's: ``2@<random>,<key>,<key>,<secret>``."""

    def b64(n: int) -> str:
        return base64.b64encode(secrets.token_bytes(n)).decode()

    return f"2@{secrets.token_urlsafe(48)},{b64(32)},{b64(32)},{b64(16)}"


@dataclass
class _Command:
    # scan, logout, conflict, crash, disconnect, refresh_qr, reload, take_over, offline, online;
    # and for tests: blocked, deprecated, unknown_state
    name: str


class ScriptedBrowser:
    def __init__(self, driver: ScriptedDriver, session_id: str, number: int) -> None:
        self.driver = driver
        self.session_id = session_id
        self.number = number
        self._send, self._recv = trio.open_memory_channel[PageEvent](_EVENT_BUFFER)
        self._cmd_send, self._cmd_recv = trio.open_memory_channel[_Command](_EVENT_BUFFER)
        self._scope = trio.CancelScope()
        self.closed = trio.Event()
        self.current_ref: str | None = None
        self.unpaired = False  # the page asks for a login (QR or code)
        self.code: str | None = None  # the pairing code on the page, if one was asked for
        self.code_phone: str | None = None
        self._code_deadline: float | None = None
        self.on_message: Callable[[MessageEvent], None] | None = None
        self.sent: dict[str, str] = {}  # message id -> text, what send_text sent

    @property
    def events(self) -> trio.MemoryReceiveChannel[PageEvent]:
        return self._recv

    @property
    def process_group(self) -> int | None:
        return None

    # -- what the page does -------------------------------------------------------

    async def _script(self) -> None:
        cfg = self.driver.config
        with self._scope:
            try:
                await self._emit(PageInfo("OPENING", False, SCRIPTED_WEB_VERSION, ()))
                if self.session_id in self.driver.authed:
                    await self._load_app()
                else:
                    await self._qr_phase(cfg)
                await self._connected_phase()
            finally:
                self.current_ref = None
                self._send.close()
                self.closed.set()

    async def _emit(self, event: PageEvent) -> None:
        await self._send.send(event)

    async def _qr_phase(self, cfg: ScriptedConfig) -> None:
        auto_scan_at = (
            trio.current_time() + cfg.auto_scan_after if cfg.auto_scan_after is not None else None
        )
        self.unpaired = True
        await self._emit(LoginRequired())
        while True:
            for i in range(cfg.qr_refs_per_cycle):
                ttl = cfg.first_qr_ttl if i == 0 else cfg.qr_ttl
                self.current_ref = _fake_ref()
                await self._emit(QrShown(self.current_ref, ttl))
                deadline = trio.current_time() + ttl
                while True:
                    wake = deadline if auto_scan_at is None else min(deadline, auto_scan_at)
                    cmd = await self._command_until(wake)
                    if cmd is None:
                        if auto_scan_at is not None and trio.current_time() >= auto_scan_at:
                            cmd = _Command("scan")
                        else:
                            break  # this ref expired
                    if cmd.name == "scan":  # a scanned QR, or an entered pairing code
                        await self._link()
                        return
                    if cmd.name == "refresh_qr":
                        break
                    await self._common(cmd)
            self.current_ref = None
            if self.code is None:  # a page showing a pairing code shows no QR to run out
                await self._emit(LoginRequired(idle=True))
                await self._emit(QrExpired())
            while True:  # the reload button waits for a click
                cmd = await self._command_until(math.inf)
                if cmd is None:
                    continue
                if cmd.name == "reload":
                    break
                if cmd.name == "scan" and self.code is not None:
                    await self._link()
                    return
                await self._common(cmd)

    async def _link(self) -> None:
        self.unpaired = False
        self.code = self._code_deadline = None
        self.driver.authed.add(self.session_id)
        await self._load_app()

    async def _load_app(self) -> None:
        self.current_ref = None
        await self._emit(Loading(0))
        await trio.sleep(self.driver.config.auth_delay)
        await self._emit(Loading(100))
        await self._emit(AppShown())

    async def _connected_phase(self) -> None:
        while True:
            cmd = await self._cmd_recv.receive()
            if cmd.name == "logout":
                self.driver.authed.discard(self.session_id)
                await self._emit(LoggedOut())
                await trio.sleep_forever()  # the page now shows a new QR; the session closes us
            elif cmd.name == "conflict":
                await self._emit(Conflict())
            elif cmd.name == "take_over":
                await self._emit(AppShown())
            else:
                await self._common(cmd)

    async def _common(self, cmd: _Command) -> None:
        if cmd.name == "blocked":
            await self._emit(PageInfo("TOS_BLOCK", False, SCRIPTED_WEB_VERSION, ()))
            await self._emit(Refused("blocked", "TOS_BLOCK"))
        elif cmd.name == "deprecated":
            await self._emit(PageInfo("DEPRECATED_VERSION", False, SCRIPTED_WEB_VERSION, ()))
            await self._emit(Refused("deprecated", "DEPRECATED_VERSION"))
        elif cmd.name == "unknown_state":
            await self._emit(PageInfo("FROBNICATED", True, SCRIPTED_WEB_VERSION, ()))
        elif cmd.name == "crash":
            await self._gone("crashed", "scripted crash")
        elif cmd.name == "disconnect":
            await self._gone("connection_lost", "scripted connection loss")
        elif cmd.name in ("offline", "online"):
            await self._emit(PhoneOffline(cmd.name == "offline"))
        elif cmd.name == "logout":
            # Before linking there is nothing to unlink; the page just stays.
            self.driver.authed.discard(self.session_id)

    async def _gone(self, kind: str, message: str) -> None:
        await self._emit(BrowserGone(kind, message))
        self._scope.cancel()
        await trio.lowlevel.checkpoint()

    async def _command_until(self, deadline: float) -> _Command | None:
        """The next command before ``deadline``; None at the deadline. A pairing code
        that runs out meanwhile makes the page ask for a new login, as WhatsApp's does."""
        while True:
            code_at = self._code_deadline
            with trio.move_on_at(deadline if code_at is None else min(deadline, code_at)):
                return await self._cmd_recv.receive()
            # Re-read: a new code asked for meanwhile replaced the one that woke us.
            if self._code_deadline is not None and trio.current_time() >= self._code_deadline:
                self.code = self._code_deadline = None
                await self._emit(LoginRequired(idle=True))
                continue
            if trio.current_time() < deadline:
                continue  # woken for a code that was replaced since
            return None

    # -- what the session and the tests do ------------------------------------

    def command(self, name: str) -> None:
        if self.closed.is_set():
            return
        try:
            self._cmd_send.send_nowait(_Command(name))
        except trio.WouldBlock:
            pass  # a flood of commands to one fake page; dropping some is harmless

    async def reload_qr(self) -> None:
        self.command("reload")

    async def take_over(self) -> None:
        self.command("take_over")

    async def request_pairing_code(self, phone_number: str) -> str:
        if self.closed.is_set() or not self.unpaired:
            raise PairingError("the page is not asking for a login")
        self.code = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(8))
        self.code_phone = phone_number
        self._code_deadline = trio.current_time() + self.driver.config.pairing_code_ttl
        self.command("wake")  # the script re-reads the code deadline
        return self.code

    # -- messages: sends are recorded, and reported back as the page would --------------

    async def new_message_id(self) -> str:
        return "3EB0" + secrets.token_hex(10).upper()

    async def send_text(self, to: str, text: str, message_id: str) -> SentText:
        if self.closed.is_set() or self.unpaired:
            raise SendError("the page is not logged in")
        key = f"true_{to}_{message_id}"
        if key not in self.sent:
            self.sent[key] = text
            self.deliver(PageMessage(key, to, "me@c.us", True, "chat", text, int(time.time()), 1))
        return SentText(key, to, 1, int(time.time()))

    def deliver(self, event: MessageEvent) -> None:
        """The page reports a message or an ack (tests: an incoming message)."""
        if self.on_message is not None:
            self.on_message(event)

    async def logout(self) -> bool:
        self.driver.authed.discard(self.session_id)
        await self.close()
        return True

    async def close(self) -> None:
        self._scope.cancel()
        await self.closed.wait()
        self.driver.live.pop(self.session_id, None)


@dataclass
class ScriptedDriver:
    config: ScriptedConfig = field(default_factory=ScriptedConfig)
    name: str = "scripted"
    authed: set[str] = field(default_factory=set)
    live: dict[str, ScriptedBrowser] = field(default_factory=dict)
    launches: int = 0
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def sandbox(self) -> None:
        return None  # no processes to confine

    def health_checks(self) -> list[HealthCheck]:
        return []

    @contextlib.asynccontextmanager
    async def open(self, options: LaunchOptions) -> AsyncIterator[ScriptedBrowser]:
        sid = options.session_id
        if sid in self.live:
            # Two browsers on one profile is exactly what the manager must prevent.
            raise LaunchError(f"profile of session {sid!r} is in use by a running browser")
        self.launches += 1
        await trio.sleep(self.config.launch_delay)
        if self.config.fail_launch:
            raise LaunchError("scripted launch failure")
        async with unwrapped_group(), trio.open_nursery() as nursery:
            browser = ScriptedBrowser(self, sid, next(self._numbers))
            browser.on_message = options.on_message
            self.live[sid] = browser
            nursery.start_soon(browser._script)
            try:
                yield browser
            finally:
                with trio.CancelScope(shield=True):
                    await browser.close()

    async def wipe_auth(self, session_id: str) -> None:
        self.authed.discard(session_id)

    async def export_auth(self, session_id: str) -> bytes | None:
        # The same format as Chromium's, so the fleet's checks run on scripted hosts too.
        return pack_files([(SCRIPTED_LOGIN, b"linked")]) if session_id in self.authed else None

    async def import_auth(self, session_id: str, data: bytes, max_bytes: int) -> None:
        if session_id in self.live:
            raise SnapshotError(f"session {session_id!r} has a running browser here")
        if SCRIPTED_LOGIN in dict(unpack(data, max_bytes)):
            self.authed.add(session_id)
        else:
            self.authed.discard(session_id)

    def simulate(self, session_id: str, action: str) -> bool:
        """Act on a live fake page as the phone would. False when no browser is live."""
        browser = self.live.get(session_id)
        if browser is None:
            return False
        browser.command(action)
        return True
