"""The wire types of messages: sending, the inbox, and their watch events.

Part of the protocol (``protocol.py`` imports them into ``METHODS`` and the watch
events); kept apart because they are a subject of their own. ``docs/protocol.md``
describes ``send_text`` and ``messages``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Final

import msgspec

from .errors import InvalidArgument

# A recipient: an international number (digits only, no "+"), a contact's chat id
# (the number and "@c.us") or a group's ("...@g.us"), as WhatsApp Web names chats.
CHAT_RULE: Final = r"^(?:[0-9]{7,15}(?:@c\.us)?|[0-9]{5,20}(?:-[0-9]{1,12})?@g\.us)\Z"
_CHAT_RE: Final = re.compile(CHAT_RULE)
ChatTarget = Annotated[str, msgspec.Meta(pattern=CHAT_RULE, max_length=64)]

# WhatsApp's limit on one text message, in characters; NUL is refused (it ends strings
# in too many of the places a message goes).
MAX_TEXT: Final = 65536
MessageText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT, pattern=r"^[^\x00]+\Z")]

# Chosen by the client (a UUID, a job id): printable ASCII, no spaces.
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+\Z")]

# An inbox cursor: the seq of the last message read; 0 reads from the start.
Cursor = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
PageSize = Annotated[int, msgspec.Meta(ge=1, le=1000)]


def chat_id(to: str) -> str:
    """The chat id of a recipient: a bare number becomes ``<number>@c.us``."""
    if not isinstance(to, str) or _CHAT_RE.fullmatch(to) is None:
        raise InvalidArgument(f"invalid recipient {to!r}: must match {CHAT_RULE}", {"rule": CHAT_RULE})
    return to if "@" in to else to + "@c.us"


class Media(msgspec.Struct, frozen=True, gc=False):
    """What a non-text message carries besides its caption; the media itself is not downloaded."""

    mimetype: str | None = None
    size: int | None = None  # bytes
    filename: str | None = None


class Message(msgspec.Struct, frozen=True, gc=False):
    """One message of a session's inbox, arrived or sent (``from_me``).

    ``seq`` is its place in the session's inbox (1, 2, ...; never reused); ``id`` is
    WhatsApp's. ``text`` is the body of a text message and the caption of any other
    (``type`` says which: chat, image, video, audio, ptt, document, sticker, ...).
    ``ack``: -1 error, 0 pending, 1 sent to the server, 2 delivered, 3 read, 4 played.
    """

    seq: int
    id: str
    chat: str
    sender: str
    from_me: bool
    type: str
    text: str
    at: datetime
    ack: int
    media: Media | None = None


class MessagePage(msgspec.Struct, frozen=True):
    """Messages after a cursor, in order; ``next`` is the cursor to read on from
    (the last message's seq, or the cursor given when there was nothing new)."""

    messages: list[Message]
    next: int


class SentMessage(msgspec.Struct, frozen=True, gc=False):
    """What ``send_text`` sent: WhatsApp's message id, the chat, its ack then."""

    session: str
    id: str
    to: str
    ack: int
    at: datetime


class MessageReceived(msgspec.Struct, tag="message", tag_field="type", frozen=True):
    """A message written to the session's inbox (after it was written)."""

    session: str
    message: Message


class MessageAck(msgspec.Struct, tag="message_ack", tag_field="type", frozen=True):
    """The delivery state of an inbox message changed."""

    session: str
    id: str
    seq: int
    ack: int
