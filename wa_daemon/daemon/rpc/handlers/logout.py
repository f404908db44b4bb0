"""``logout``: unlink the device through the page and stop the session."""

from __future__ import annotations

from ....protocol import SessionParams, SessionStatus
from .base import Operation, Peer, Services


async def logout(services: Services, params: SessionParams, peer: Peer) -> SessionStatus:
    return await services.manager.logout(params.session, peer.caller)


HANDLER = Operation("logout", logout)
