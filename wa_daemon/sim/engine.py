"""The simulator model on trio's clock: a timer task applies deadlines, waiters hear of changes.

Every call reads ``trio.current_time()``, so under ``trio.testing.MockClock`` the
whole WhatsApp schedule (60 s, 5 × 20 s, loading) runs in virtual time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import trio

from .model import Device, Page, SimModel
from .options import SimOptions


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

    # -- pages -------------------------------------------------------------------------

    def open_page(self, token: str | None = None) -> Page:
        try:
            return self.model.open_page(token, trio.current_time())
        finally:
            self._notify()

    def attach(self, page_id: str) -> Page:
        try:
            return self.model.attach(page_id, trio.current_time())
        finally:
            self._notify()

    def detach(self, page_id: str) -> None:
        try:
            self.model.detach(page_id, trio.current_time())
        finally:
            self._notify()

    def reload(self, page_id: str) -> Page:
        try:
            return self.model.reload(page_id, trio.current_time())
        finally:
            self._notify()

    def take_over(self, page_id: str) -> Page:
        try:
            return self.model.take_over(page_id, trio.current_time())
        finally:
            self._notify()

    def page_logout(self, page_id: str) -> Device:
        try:
            return self.model.page_logout(page_id, trio.current_time())
        finally:
            self._notify()

    def view(self, page_id: str) -> dict[str, Any]:
        self._sync()
        return self.model.view(self.model.page(page_id))

    def pages(self) -> list[dict[str, Any]]:
        self._sync()
        return [self.model.page_json(p) for p in self.model.pages.values()]

    # -- the phone and faults ----------------------------------------------------------

    def scan(self, presented: str) -> Device:
        try:
            return self.model.scan(presented, trio.current_time())
        finally:
            self._notify()

    def logout(self, device_id: str) -> Device:
        try:
            return self.model.logout(device_id, trio.current_time())
        finally:
            self._notify()

    def conflict(self, device_id: str) -> Page:
        try:
            return self.model.conflict(device_id, trio.current_time())
        finally:
            self._notify()

    def offline(self, device_id: str, duration: float | None = None) -> Device:
        try:
            return self.model.offline(device_id, trio.current_time(), duration)
        finally:
            self._notify()

    def online(self, device_id: str) -> Device:
        try:
            return self.model.online(device_id, trio.current_time())
        finally:
            self._notify()

    def hang(self, device_id: str) -> Page:
        try:
            return self.model.hang(device_id, trio.current_time())
        finally:
            self._notify()

    def devices(self) -> list[dict[str, Any]]:
        self._sync()
        return [self.model.device_json(d) for d in self.model.devices.values()]

    def device(self, device_id: str) -> dict[str, Any]:
        self._sync()
        return self.model.device_json(self.model.device(device_id))
