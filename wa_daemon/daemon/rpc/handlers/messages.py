"""``messages``: a page of a session's inbox after a cursor, from the inbox on disk."""

from __future__ import annotations

from ....message_types import MessagePage
from ....protocol import MessagesParams
from .base import Peer, Read, Services


def messages(services: Services, params: MessagesParams, peer: Peer) -> MessagePage:
    return services.messaging().messages(params.session, params.after, params.limit, peer.caller)


HANDLER = Read("messages", messages)
