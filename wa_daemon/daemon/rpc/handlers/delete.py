"""``delete``: stop a session and forget it, its saved login and its inbox included."""

from __future__ import annotations

from ....protocol import Deleted, SessionParams
from .base import Operation, Peer, Services


async def delete(services: Services, params: SessionParams, peer: Peer) -> Deleted:
    await services.manager.delete(params.session, peer.caller)
    if services.messages is not None:
        services.messages.forget(params.session)  # its inbox goes with it
    return Deleted(params.session)


HANDLER = Operation("delete", delete)
