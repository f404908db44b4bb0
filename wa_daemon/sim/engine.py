"""The simulator model on trio's clock: a timer task applies deadlines, waiters hear of changes.

Every call reads ``trio.current_time()``, so under ``trio.testing.MockClock`` the
whole WhatsApp schedule (60 s, 5 × 20 s, loading) runs in virtual time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from .chats import Incoming, Sent
from .model import USER_INITIATED, SimModel
from .options import SimOptions
from .records import Device, Page, Pairing

T = TypeVar("T")


class SimEngine:
    def __init__(self, options: SimOptions | None = None, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.options = options or SimOptions()
        self.model = SimModel(self.options, wall_clock=wall_clock)
        self._changed = trio.Event()
        self._seen = self.model.version

    # -- plumbing ----------------------------------------------------------------------

    def _sync(self) -> None:
        self.model.advance(trio.current_time())
        self._notify()

    def _notify(self) -> None:
        if self.model.version != self._seen:
            self._seen = self.model.version
            self._changed.set()
            self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The timer: wakes at the next deadline, or earlier when a change moves it."""
        task_status.started()
        while True:
            self._sync()
            deadline = self.model.next_deadline()
            changed = self._changed
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await changed.wait()

    async def wait_changed(self) -> None:
        """Return after the next change of anything."""
        await self._changed.wait()

    async def wait_view(self, page_id: str, after_version: int) -> dict[str, Any] | None:
        """The page's view once its version passes ``after_version``; None once the page is gone."""
        while True:
            self._sync()
            page = self.model.pages.get(page_id)
            if page is None:
                return None
            if page.version > after_version:
                return self.model.view(page)
            await self._changed.wait()

    def _apply(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a model method at trio's now, then wake whoever waits for a change
        (also when it refused: catching up with deadlines may have changed things)."""
        try:
            return method(*args, trio.current_time(), **kwargs)
        finally:
            self._notify()

    # -- pages -------------------------------------------------------------------------

    def open_page(self, token: str | None = None) -> Page:
        return self._apply(self.model.open_page, token)

    def attach(self, page_id: str) -> Page:
        return self._apply(self.model.attach, page_id)

    def detach(self, page_id: str) -> None:
        self._apply(self.model.detach, page_id)

    def reload(self, page_id: str) -> Page:
        return self._apply(self.model.reload, page_id)

    def take_over(self, page_id: str) -> Page:
        return self._apply(self.model.take_over, page_id)

    def page_logout(self, page_id: str) -> Device:
        return self._apply(self.model.page_logout, page_id)

    def request_code(self, page_id: str, phone: str, *, notify: bool = True) -> Pairing:
        return self._apply(self.model.request_code, page_id, phone, notify=notify)

    def force_state(self, page_id: str, state: str | None) -> Page:
        return self._apply(self.model.force_state, page_id, state)

    def view(self, page_id: str) -> dict[str, Any]:
        self._sync()
        return self.model.view(self.model.page(page_id))

    def pages(self) -> list[dict[str, Any]]:
        self._sync()
        return [self.model.page_json(p) for p in self.model.pages.values()]

    # -- the phone and faults ----------------------------------------------------------

    def scan(self, presented: str) -> Device:
        return self._apply(self.model.scan, presented)

    def pair(self, phone: str, code: str) -> Device:
        return self._apply(self.model.pair, phone, code)

    def logout(self, device_id: str, reason: str = USER_INITIATED) -> Device:
        return self._apply(lambda d, now: self.model.logout(d, now, reason), device_id)

    def conflict(self, device_id: str) -> Page:
        return self._apply(self.model.conflict, device_id)

    def offline(self, device_id: str, duration: float | None = None) -> Device:
        return self._apply(lambda d, now: self.model.offline(d, now, duration), device_id)

    def online(self, device_id: str) -> Device:
        return self._apply(self.model.online, device_id)

    def hang(self, device_id: str) -> Page:
        return self._apply(self.model.hang, device_id)

    def force_device_state(self, device_id: str, state: str | None) -> Page:
        return self._apply(self.model.force_device_state, device_id, state)

    # -- conversations -------------------------------------------------------------------

    def incoming(self, device_id: str, sender: str, text: str) -> Incoming:
        return self._apply(self.model.incoming, device_id, sender, text)

    def received(self, page_id: str, ids: list[str]) -> int:
        return self._apply(self.model.received, page_id, ids)

    def send_message(self, page_id: str, key: str, to: str, text: str) -> Sent:
        return self._apply(self.model.send_message, page_id, key, to, text)

    def read(self, device_id: str) -> int:
        return self._apply(self.model.read, device_id)

    def outbox(self, device_id: str) -> list[dict[str, Any]]:
        self._sync()
        device = self.model.device(device_id)
        return [s.json() for s in self.model.chats_of(device).outbox]

    def devices(self) -> list[dict[str, Any]]:
        self._sync()
        return [self.model.device_json(d) for d in self.model.devices.values()]

    def device(self, device_id: str) -> dict[str, Any]:
        self._sync()
        return self.model.device_json(self.model.device(device_id))
