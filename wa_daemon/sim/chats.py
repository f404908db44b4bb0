"""The phone side of conversations: what a linked device receives and what it sent.

Sans-I/O like the model: every method takes ``now``. A message to the device
(``incoming``) waits in the device's queue until a page holding its session
takes it into its message collection and says so (``received``): a device whose
page is closed gets it when a page comes back, as WhatsApp delivers on sync. A
message the page sends goes to the device's outbox with ack 1 (the server has
it), 2 once delivered to the recipient's phone (``DELIVERY_DELAY`` later) and 3
when the recipient reads it (``read``). The page mirrors the acks through its
view, so they reach its ``Msg`` collection as ``change:ack`` events.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .options import SimOptions
from .records import BadRequest, Device, InvalidState, Page

# WhatsApp's ack values: -1 error, 0 pending (clock), 1 server, 2 delivered, 3 read, 4 played.
ACK_SERVER, ACK_DELIVERED, ACK_READ = 1, 2, 3
# Simulated seconds from the server's ack to the recipient's phone's (scaled).
DELIVERY_DELAY = 0.5
# What one view carries: messages still to deliver, and acks of the latest sends.
VIEW_PENDING = 50
VIEW_ACKS = 200
MAX_TEXT = 65536
_NUMBER = re.compile(r"[0-9]{7,15}")
_CHAT = re.compile(r"[0-9]{7,15}@c\.us|[0-9]{5,20}(-[0-9]{1,12})?@g\.us")
_MSG_ID = re.compile(r"[0-9A-F]{16,32}")


def new_message_id() -> str:
    """A message id as WhatsApp Web makes them: 3EB0 and hex."""
    return "3EB0" + secrets.token_hex(10).upper()


@dataclass
class Incoming:
    id: str  # the serialized key: false_<chat>_<id>
    chat: str
    sender: str
    text: str
    t: int  # seconds since the epoch, as Msg.t

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "chat": self.chat, "from": self.sender, "text": self.text, "t": self.t}


@dataclass
class Sent:
    id: str  # the serialized key: true_<chat>_<id>
    to: str
    text: str
    t: int
    ack: int = ACK_SERVER
    deliver_at: float = 0.0

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "to": self.to, "text": self.text, "t": self.t, "ack": self.ack}


@dataclass
class Chats:
    """One device's conversations; ``me`` is its own number."""

    me: str
    pending: list[Incoming] = field(default_factory=list)
    outbox: list[Sent] = field(default_factory=list)
    version: int = 0

    def incoming(self, sender: str, text: str, wall: float) -> Incoming:
        if not isinstance(sender, str) or not _NUMBER.fullmatch(sender):
            raise BadRequest(f"from must be 7 to 15 digits, got {sender!r}")
        _check_text(text)
        chat = sender + "@c.us"
        msg = Incoming(f"false_{chat}_{new_message_id()}", chat, chat, text, int(wall))
        self.pending.append(msg)
        self.version += 1
        return msg

    def received(self, ids: list[str]) -> int:
        """The page took these into its collection: they are delivered."""
        wanted = set(ids)
        before = len(self.pending)
        self.pending = [m for m in self.pending if m.id not in wanted]
        if len(self.pending) != before:
            self.version += 1
        return before - len(self.pending)

    def send(self, key: str, to: str, text: str, wall: float, now: float, delay: float) -> Sent:
        """The page's ``addAndSendMsgToChat``; the same key twice is one message."""
        if not isinstance(to, str) or not _CHAT.fullmatch(to):
            raise BadRequest(f"to must be a chat id (<number>@c.us or <group>@g.us), got {to!r}")
        _check_text(text)
        if not isinstance(key, str) or not _MSG_ID.fullmatch(key):
            raise BadRequest("id must be a message id of 16 to 32 upper-case hex digits")
        serialized = f"true_{to}_{key}"
        for sent in self.outbox:
            if sent.id == serialized:
                return sent
        sent = Sent(serialized, to, text, int(wall), ACK_SERVER, now + delay)
        self.outbox.append(sent)
        self.version += 1
        return sent

    def read(self) -> int:
        """The recipients read everything: ack 3 on every delivered-or-sent message."""
        changed = 0
        for sent in self.outbox:
            if sent.ack < ACK_READ:
                sent.ack = ACK_READ
                changed += 1
        if changed:
            self.version += 1
        return changed

    def advance(self, now: float) -> bool:
        changed = False
        for sent in self.outbox:
            if sent.ack == ACK_SERVER and sent.deliver_at <= now:
                sent.ack = ACK_DELIVERED
                changed = True
        if changed:
            self.version += 1
        return changed

    def next_deadline(self) -> float | None:
        times = [s.deliver_at for s in self.outbox if s.ack == ACK_SERVER]
        return min(times) if times else None

    def view(self) -> dict[str, Any]:
        return {
            "pending": [m.json() for m in self.pending[:VIEW_PENDING]],
            "acks": {s.id: s.ack for s in self.outbox[-VIEW_ACKS:]},
        }


def _check_text(text: object) -> None:
    if not isinstance(text, str) or not text or len(text) > MAX_TEXT:
        raise BadRequest(f"text must be a non-empty string of at most {MAX_TEXT} characters")


class Conversations:
    """The model's conversation methods (SimModel mixes them in); each takes ``now``."""

    options: SimOptions
    pages: dict[str, Page]
    devices: dict[str, Device]
    chats: dict[str, Chats]
    version: int
    wall_clock: Callable[[], float]

    def advance(self, now: float) -> bool:
        raise NotImplementedError

    def device(self, device_id: str) -> Device:
        raise NotImplementedError

    def page(self, page_id: str) -> Page:
        raise NotImplementedError

    def _touch(self, page: Page) -> None:
        raise NotImplementedError

    def chats_of(self, device: Device) -> Chats:
        chats = self.chats.get(device.id)
        if chats is None:
            # Its own number: the one it was linked with, else one made up for it.
            me = device.number or "1555" + str(int(device.id.split("-")[-1], 16) % 10**7).zfill(7)
            chats = self.chats[device.id] = Chats(me)
        return chats

    def incoming(self, device_id: str, sender: str, text: str, now: float) -> Incoming:
        """A message from ``sender`` to the device; its page gets it now or when one opens."""
        self.advance(now)
        device = self.device(device_id)
        msg = self.chats_of(device).incoming(sender, text, self.wall_clock())
        self._chats_changed(device)
        return msg

    def received(self, page_id: str, ids: list[str], now: float) -> int:
        self.advance(now)
        device = self._page_device(page_id)
        count = self.chats_of(device).received(ids)
        self._chats_changed(device)
        return count

    def send_message(self, page_id: str, key: str, to: str, text: str, now: float) -> Sent:
        """The page's ``addAndSendMsgToChat``: only a page holding a linked session sends."""
        self.advance(now)
        device = self._page_device(page_id)
        sent = self.chats_of(device).send(key, to, text, self.wall_clock(), now, self.options.scaled(DELIVERY_DELAY))
        self._chats_changed(device)
        return sent

    def read(self, device_id: str, now: float) -> int:
        self.advance(now)
        device = self.device(device_id)
        count = self.chats_of(device).read()
        self._chats_changed(device)
        return count

    def _page_device(self, page_id: str) -> Device:
        page = self.page(page_id)
        device = self.devices.get(page.device_id) if page.device_id else None
        if device is None or device.page_id != page.id or page.screen != "app":
            raise InvalidState(f"page {page_id} does not hold a linked session (screen: {page.screen})")
        return device

    def _chats_changed(self, device: Device) -> None:
        self.version += 1
        page = self.pages.get(device.page_id) if device.page_id else None
        if page is not None:
            self._touch(page)

