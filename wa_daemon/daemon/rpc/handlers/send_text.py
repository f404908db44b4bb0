"""``send_text``: send a text message through a session's page, idempotent by key;
it waits (bounded by ``send_wait``) for a session on its way to connected."""

from __future__ import annotations

from ....message_types import SentMessage
from ....protocol import SendTextParams
from .base import Operation, Peer, Services


async def send_text(services: Services, params: SendTextParams, peer: Peer) -> SentMessage:
    return await services.messaging().send_text(
        params.session, params.to, params.text, params.idempotency_key, peer.caller
    )


HANDLER = Operation("send_text", send_text)
