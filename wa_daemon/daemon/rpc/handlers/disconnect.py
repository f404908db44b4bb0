"""``disconnect``: stop a session's browser, keeping its login."""

from __future__ import annotations

from ....protocol import SessionParams, SessionStatus
from .base import Operation, Peer, Services


async def disconnect(services: Services, params: SessionParams, peer: Peer) -> SessionStatus:
    return await services.manager.disconnect(params.session, peer.caller)


HANDLER = Operation("disconnect", disconnect)
