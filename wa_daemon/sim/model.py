"""What the simulated WhatsApp Web knows: pages, refs, pairing codes, linked devices, and their clocks.

Sans-I/O: no sockets, no sleeping, no reading the time. Every method takes
``now`` (seconds on whatever monotonic clock the caller uses; the engine uses
trio's, so tests run it under ``MockClock``) and first catches up with every
deadline up to ``now``, so the result never depends on when a timer task last
ran. :meth:`SimModel.next_deadline` tells the caller when to call
:meth:`SimModel.advance` again.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from .chats import Chats, Conversations
from .options import SimOptions
from .records import (
    BadRequest,
    Device,
    DeviceState,
    InvalidState,
    Logout,
    NotFound,
    Page,
    Pairing,
    Screen,
)
from .refs import new_keys, new_ref, plain_form, qr_rows

# The loading screen shows 0, 25, 50 and 75 %, evenly over loading_time, then the app.
LOADING_STEPS = 4
UNPAIRED_SCREENS: tuple[Screen, ...] = ("qr", "reload", "code", "code_expired")
# Socket.state of the screens that fix it; loading and app are CONNECTED, or TIMEOUT
# while the phone is offline.
_SCREEN_STATE: dict[Screen, str] = {
    "qr": "UNPAIRED",
    "code": "UNPAIRED",
    "reload": "UNPAIRED_IDLE",
    "code_expired": "UNPAIRED_IDLE",
    "conflict": "CONFLICT",
}
UNPAIRED_STATES = ("UNPAIRED", "UNPAIRED_IDLE")

# Pairing codes as the phone shows them: 8 characters without 0, O, I and U, which
# people misread; typed with or without the dash after the fourth.
CODE_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTVWXYZ"
CODE_LENGTH = 8
_CODE = re.compile(f"[{CODE_ALPHABET}]{{4}}-?[{CODE_ALPHABET}]{{4}}")
# An international number without "+", spaces or dashes, as whatsapp-web.js asks for.
_PHONE = re.compile(r"[0-9]{7,15}")
# Any name the real page might put in Socket.state, known or not.
_STATE_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,39}")
_LOGOUT_REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")
USER_INITIATED = "user_initiated"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


class SimModel(Conversations):
    def __init__(self, options: SimOptions, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.wall_clock = wall_clock
        self.pages: dict[str, Page] = {}
        self.devices: dict[str, Device] = {}
        self.version = 0  # bumped on every change, so callers can tell whether to notify
        self.refs_issued = 0
        self._by_ref: dict[str, str] = {}  # plain ref -> page id
        self._by_token: dict[str, str] = {}  # token -> device id
        self.chats: dict[str, Chats] = {}  # device id -> its conversations (chats.py)
        self._now = -math.inf

    # -- time ----------------------------------------------------------------------

    def advance(self, now: float) -> bool:
        """Apply every deadline up to ``now``. True if anything changed."""
        before = self.version
        self._now = max(self._now, now)
        for page in list(self.pages.values()):
            self._advance_page(page)
        for device in self.devices.values():
            if device.online_at is not None and device.online_at <= self._now:
                self._set_phone(device, online=True, until=None)
            if self.chats_of(device).advance(self._now):
                self._chats_changed(device)
        return self.version != before

    def next_deadline(self) -> float | None:
        times: list[float] = []
        for page in self.pages.values():
            if page.screen == "qr":
                times.append(page.ref_deadline)
            elif page.screen == "code" and page.pairing is not None:
                times.append(page.pairing.deadline)
            elif page.screen == "loading":
                times.append(self._next_loading_step(page))
            if page.close_at is not None:
                times.append(page.close_at)
        times.extend(d.online_at for d in self.devices.values() if d.online_at is not None)
        times.extend(t for d in self.devices.values() if (t := self.chats_of(d).next_deadline()) is not None)
        finite = [t for t in times if math.isfinite(t)]
        return min(finite) if finite else None

    def _advance_page(self, page: Page) -> None:
        now = self._now
        if page.close_at is not None and page.close_at <= now:
            self._remove_page(page)
            return
        # Each ref's deadline follows from the previous one, not from when we noticed,
        # so a late timer never stretches the schedule.
        while page.screen == "qr" and page.ref_deadline <= now:
            self._expire_ref(page)
        if page.screen == "code" and page.pairing is not None and page.pairing.deadline <= now:
            # The daemon asks for a new code (or the QR) on UNPAIRED_IDLE.
            page.screen = "code_expired"
            page.pairing = None
            self._touch(page)
        if page.screen == "loading":
            self._update_loading(page)

    # -- pages -----------------------------------------------------------------------

    def open_page(self, token: str | None, now: float) -> Page:
        """A page load. A token of a device still linked skips the QR."""
        self.advance(now)
        page = Page(
            id=_new_id("p", self.pages),
            keys=new_keys(self.options.ref_platform),
            close_at=now + self.options.page_grace,
        )
        self.pages[page.id] = page
        device = self._device_by_token(token)
        if device is not None:
            self._claim(device, page, loading=True)
        else:
            page.clear_auth = token is not None
            self._start_cycle(page)
        self._touch(page)
        return page

    def attach(self, page_id: str, now: float) -> Page:
        """An event stream of the page opened."""
        self.advance(now)
        page = self.page(page_id)
        page.streams += 1
        page.close_at = None
        self.version += 1  # not the page's: its view is unchanged
        return page

    def detach(self, page_id: str, now: float) -> None:
        self.advance(now)
        page = self.pages.get(page_id)
        if page is None:
            return
        page.streams = max(0, page.streams - 1)
        if page.streams == 0:
            page.close_at = now + self.options.page_grace
        self.version += 1

    def page(self, page_id: str) -> Page:
        try:
            return self.pages[page_id]
        except KeyError:
            raise NotFound(f"no page {page_id!r}") from None

    def reload(self, page_id: str, now: float) -> Page:
        """The reload button was clicked (``Cmd.refreshQR()``): a new cycle of refs.
        Also from the pairing-code screens: back to the QR, as "Link with QR code" does."""
        self.advance(now)
        page = self.page(page_id)
        if page.screen not in ("reload", "code", "code_expired"):
            raise InvalidState(f"page {page_id} shows no reload button (screen: {page.screen})")
        page.pairing = None
        self._start_cycle(page)
        return page

    def take_over(self, page_id: str, now: float) -> Page:
        """ "Use here" on a page in conflict."""
        self.advance(now)
        page = self.page(page_id)
        device = self.devices.get(page.device_id) if page.device_id else None
        if page.screen != "conflict" or device is None:
            raise InvalidState(f"page {page_id} is not in conflict (screen: {page.screen})")
        self._claim(device, page, loading=False)
        return page

    def page_logout(self, page_id: str, now: float) -> Device:
        """Log out from the page's own menu (``Socket.logout()``)."""
        self.advance(now)
        page = self.page(page_id)
        device = self.devices.get(page.device_id) if page.device_id else None
        if device is None or page.screen == "logged_out":
            raise InvalidState(f"page {page_id} is not linked")
        self._unlink(device, USER_INITIATED, by_page=page)
        return device

    def request_code(self, page_id: str, phone: str, now: float, *, notify: bool = True) -> Pairing:
        """``startAltLinkingFlow(phone)``: the page shows a code to type on that number's phone,
        instead of the QR. Asking again replaces the code."""
        self.advance(now)
        page = self.page(page_id)
        _check_phone(phone)
        if page.screen not in UNPAIRED_SCREENS or self.socket_state(page) not in UNPAIRED_STATES:
            raise InvalidState(f"page {page_id} is not unpaired (state: {self.socket_state(page)})")
        self._forget_ref(page)
        page.ref = None
        page.ref_deadline = math.inf
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        page.pairing = Pairing(phone, code, notify, self._now + self.options.scaled(self.options.code_ttl))
        page.screen = "code"
        self._touch(page)
        return page.pairing

    def force_state(self, page_id: str, state: str | None, now: float) -> Page:
        """Pin ``Socket.state`` to ``state`` (any plausible name, known or not); None unpins."""
        self.advance(now)
        page = self.page(page_id)
        if state is not None and not _STATE_NAME.fullmatch(state):
            raise BadRequest(f"state must match {_STATE_NAME.pattern} or be null, got {state!r}")
        page.forced_state = state
        self._touch(page)
        return page

    # -- the phone -------------------------------------------------------------------

    def scan(self, presented: str, now: float) -> Device:
        """The phone presents a QR payload: link the page showing it."""
        self.advance(now)
        page = self.pages.get(self._by_ref.get(plain_form(presented), ""))
        if page is None or page.screen != "qr" or page.ref is None or not page.ref.accepts(presented):
            raise NotFound("unknown or expired ref")
        return self._link_new(page, number=None)

    def pair(self, phone: str, code: str, now: float) -> Device:
        """The phone's owner types the code shown for their number: link that page."""
        self.advance(now)
        _check_phone(phone)
        wanted = _normalise_code(code)
        for page in self.pages.values():
            pairing = page.pairing
            if page.screen == "code" and pairing is not None and (pairing.phone, pairing.code) == (phone, wanted):
                return self._link_new(page, number=phone)
        raise NotFound("no page shows this code for this number (wrong, expired, or another number's)")

    def device(self, device_id: str) -> Device:
        try:
            return self.devices[device_id]
        except KeyError:
            raise NotFound(f"no linked device {device_id!r}") from None

    def logout(self, device_id: str, now: float, reason: str = USER_INITIATED) -> Device:
        """The phone (or WhatsApp, for ``reason``) unlinks the device."""
        self.advance(now)
        device = self.device(device_id)
        if not _LOGOUT_REASON.fullmatch(reason):
            raise BadRequest(f"reason must match {_LOGOUT_REASON.pattern}, got {reason!r}")
        self._unlink(device, reason, by_page=None)
        return device

    def conflict(self, device_id: str, now: float) -> Page:
        """WhatsApp opens in another window: the page holding the session loses it."""
        self.advance(now)
        device = self.device(device_id)
        page = self._holding_page(device)
        device.page_id = None
        device.elsewhere = True
        page.screen = "conflict"
        page.percent = None
        self._touch(page)
        return page

    def offline(self, device_id: str, now: float, duration: float | None = None) -> Device:
        """The phone stops answering, for ``duration`` simulated seconds or until :meth:`online`."""
        self.advance(now)
        device = self.device(device_id)
        until = None if duration is None else now + self.options.scaled(duration)
        self._set_phone(device, online=False, until=until)
        return device

    def online(self, device_id: str, now: float) -> Device:
        self.advance(now)
        device = self.device(device_id)
        self._set_phone(device, online=True, until=None)
        return device

    def hang(self, device_id: str, now: float) -> Page:
        """The renderer of the page holding the session stops responding."""
        self.advance(now)
        page = self._holding_page(self.device(device_id))
        page.hung = True
        self._touch(page)
        return page

    def force_device_state(self, device_id: str, state: str | None, now: float) -> Page:
        """:meth:`force_state` on the page holding the device's session."""
        self.advance(now)
        return self.force_state(self._holding_page(self.device(device_id)).id, state, now)

    # -- what the outside sees ---------------------------------------------------------

    def device_state(self, device: Device) -> DeviceState:
        page = self.pages.get(device.page_id) if device.page_id else None
        if page is not None and page.hung:
            return "hung"
        if device.elsewhere:
            return "conflict"
        if not device.phone_online:
            return "offline"
        if page is not None and page.screen == "loading":
            return "loading"
        return "linked"

    def device_json(self, device: Device) -> dict[str, Any]:
        return {
            "id": device.id,
            "state": self.device_state(device),
            "linked_at": _iso(device.linked_at),
            "page": device.page_id,
            "phone": "online" if device.phone_online else "offline",
            "number": device.number,
        }

    def page_json(self, page: Page) -> dict[str, Any]:
        return {
            "id": page.id,
            "screen": page.screen,
            "state": self.socket_state(page),
            "ref": page.ref.shown if page.ref is not None and page.screen == "qr" else None,
            "device": page.device_id,
            "open": page.streams > 0,
            "hung": page.hung,
        }

    # -- the module page's models --------------------------------------------------------

    def socket_state(self, page: Page) -> str | None:
        """``Socket.state``; None on the way out after a logout (the page keeps what it had)."""
        if page.screen == "logged_out":
            return None
        return page.forced_state or self.modelled_state(page)

    def modelled_state(self, page: Page) -> str:
        state = _SCREEN_STATE.get(page.screen)
        if state is not None:
            return state
        return "TIMEOUT" if self._phone_offline(page) else "CONNECTED"

    def stream(self, page: Page) -> tuple[str, str]:
        """``(Stream.mode, Stream.info)``."""
        if page.screen in UNPAIRED_SCREENS:
            return "QR", "NORMAL"
        if page.screen == "conflict":
            return "CONFLICT", "NORMAL"
        if self._phone_offline(page):
            return "OFFLINE", "OFFLINE"
        if page.screen == "loading":
            return "SYNCING", "SYNCING"
        return "MAIN", "NORMAL"

    def progress(self, page: Page) -> int:
        """``OfflineMessageHandler.getOfflineDeliveryProgress()``."""
        return 100 if page.synced else page.percent or 0

    def pairing_json(self, page: Page) -> dict[str, Any] | None:
        pairing = page.pairing if page.screen == "code" else None
        if pairing is None:
            return None
        return {"phone": pairing.phone, "code": pairing.code, "expires_in": max(0.0, pairing.deadline - self._now)}

    def view(self, page: Page) -> dict[str, Any]:
        """Everything the page renders; sent whole on every change, so a reconnecting
        page needs no history."""
        device = self.devices.get(page.device_id) if page.device_id else None
        showing_qr = page.screen == "qr" and page.ref is not None
        return {
            "page": page.id,
            "version": page.version,
            "screen": page.screen,
            "ref": page.ref.shown if page.ref is not None else None,
            "qr": list(qr_rows(page.ref.shown)) if showing_qr and page.ref is not None else None,
            "ttl": page.ref_ttl if showing_qr else None,
            "percent": page.percent,
            "offline": self._phone_offline(page),
            "hung": page.hung,
            "auth": {"device": device.id, "token": device.token} if device is not None else None,
            "clear_auth": page.clear_auth,
            # The module page's models, all derived here so the page only mirrors them.
            "state": self.socket_state(page),
            "forced": page.forced_state is not None,
            "has_synced": page.synced,
            "progress": self.progress(page),
            "stream": dict(zip(("mode", "info"), self.stream(page), strict=True)),
            "conn_ref": page.ref.conn if showing_qr and page.ref is not None else None,
            "keys": page.keys.json(),
            "pairing": self.pairing_json(page),
            "logout": {"source": page.logout.source, "reason": page.logout.reason} if page.logout else None,
            # The conversations of the session this page holds (chats.py): what to deliver, the acks.
            "me": self.chats_of(device).me if device is not None else None,
            "chats": self.chats_of(device).view() if device is not None and device.page_id == page.id else None,
        }

    # -- internals ---------------------------------------------------------------------

    def _touch(self, page: Page) -> None:
        page.version += 1
        self.version += 1

    def _device_by_token(self, token: str | None) -> Device | None:
        device_id = self._by_token.get(token) if token else None
        return self.devices.get(device_id) if device_id else None

    def _holding_page(self, device: Device) -> Page:
        page = self.pages.get(device.page_id) if device.page_id else None
        if page is None:
            raise InvalidState(f"no open page holds the session of device {device.id}")
        return page

    def _start_cycle(self, page: Page) -> None:
        page.cycle += 1
        page.ref_index = 0
        self._show_ref(page, self.options.scaled(self.options.first_qr_ttl), self._now)

    def _show_ref(self, page: Page, ttl: float, start: float) -> None:
        self._forget_ref(page)
        page.ref = new_ref(page.keys, self.options.ref_format, self.options.page)
        page.ref_ttl = ttl
        page.ref_deadline = start + ttl
        page.screen = "qr"
        self._by_ref[page.ref.plain] = page.id
        self.refs_issued += 1
        self._touch(page)

    def _expire_ref(self, page: Page) -> None:
        if page.ref_index + 1 < self.options.qr_refs_per_cycle:
            page.ref_index += 1
            self._show_ref(page, self.options.scaled(self.options.qr_ttl), page.ref_deadline)
        else:
            self._forget_ref(page)
            page.screen = "reload"
            page.ref_deadline = math.inf
            self._touch(page)

    def _forget_ref(self, page: Page) -> None:
        if page.ref is not None and self._by_ref.get(page.ref.plain) == page.id:
            del self._by_ref[page.ref.plain]

    def _phone_offline(self, page: Page) -> bool:
        device = self.devices.get(page.device_id) if page.device_id else None
        return device is not None and not device.phone_online and device.page_id == page.id

    def _link_new(self, page: Page, *, number: str | None) -> Device:
        """A scan or a code links ``page`` to a new device."""
        device = Device(
            id=_new_id("d", self.devices),
            token=secrets.token_urlsafe(32),
            linked_at=self.wall_clock(),
            number=number,
        )
        self.devices[device.id] = device
        self._by_token[device.token] = device.id
        self._forget_ref(page)
        page.ref = None
        page.pairing = None
        self._claim(device, page, loading=True)
        return device

    def _claim(self, device: Device, page: Page, *, loading: bool) -> None:
        """``page`` takes the session; any other open page of the device gets the conflict screen."""
        for other in self.pages.values():
            if other is not page and other.device_id == device.id and other.screen in ("loading", "app"):
                other.screen = "conflict"
                other.percent = None
                self._touch(other)
        device.page_id = page.id
        device.elsewhere = False
        page.device_id = device.id
        page.clear_auth = False
        page.ref_deadline = math.inf
        if loading and self.options.scaled(self.options.loading_time) > 0:
            page.screen = "loading"
            page.loading_started = self._now
            page.percent = 0
        else:
            page.screen = "app"
            page.percent = None
            page.synced = True
        self._touch(page)

    def _next_loading_step(self, page: Page) -> float:
        step = self.options.scaled(self.options.loading_time) / LOADING_STEPS
        done = (page.percent or 0) * LOADING_STEPS // 100
        return page.loading_started + step * (done + 1)

    def _update_loading(self, page: Page) -> None:
        # Steps are taken by comparing with the very deadlines next_deadline() reports:
        # recomputing the percent from elapsed time could round just below a step and
        # have the timer wake forever at the same instant.
        while page.screen == "loading" and self._next_loading_step(page) <= self._now:
            done = (page.percent or 0) * LOADING_STEPS // 100 + 1
            if done >= LOADING_STEPS:
                page.screen = "app"
                page.percent = None
                page.synced = True
            else:
                page.percent = done * 100 // LOADING_STEPS
            self._touch(page)

    def _unlink(self, device: Device, reason: str, *, by_page: Page | None) -> None:
        del self.devices[device.id]
        self.chats.pop(device.id, None)
        self._by_token.pop(device.token, None)
        for page in self.pages.values():
            if page.device_id == device.id:
                page.device_id = None
                page.screen = "logged_out"
                page.percent = None
                page.clear_auth = True
                # Cmd 'logout' on the page that logged out, 'logout_from_bridge' on the others.
                page.logout = Logout("page" if page is by_page else "phone", reason)
                self._touch(page)

    def _set_phone(self, device: Device, *, online: bool, until: float | None) -> None:
        device.phone_online = online
        device.online_at = until
        self.version += 1
        for page in self.pages.values():
            if page.device_id == device.id:
                self._touch(page)

    def _remove_page(self, page: Page) -> None:
        self._forget_ref(page)
        del self.pages[page.id]
        for device in self.devices.values():
            if device.page_id == page.id:
                device.page_id = None
        self._touch(page)


def _check_phone(phone: str) -> None:
    if not isinstance(phone, str) or not _PHONE.fullmatch(phone):
        raise BadRequest(f"phone must be 7 to 15 digits, international, without '+' (e.g. 12025550108), got {phone!r}")


def _normalise_code(code: str) -> str:
    """``k7qm-2xwa`` -> ``K7QM2XWA``; BadRequest for what cannot be a code at all."""
    text = code.strip().upper() if isinstance(code, str) else ""
    if not _CODE.fullmatch(text):
        raise BadRequest(f"code must be {CODE_LENGTH} characters of {CODE_ALPHABET}, optionally as ABCD-EFGH")
    return text.replace("-", "")


def _new_id(prefix: str, taken: dict[str, Any]) -> str:
    while True:
        candidate = f"{prefix}-{secrets.token_hex(4)}"
        if candidate not in taken:
            return candidate
