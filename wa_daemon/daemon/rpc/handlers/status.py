"""``status``: one session's status, from memory."""

from __future__ import annotations

from ....protocol import SessionParams, SessionStatus
from .base import Peer, Read, Services


def status(services: Services, params: SessionParams, peer: Peer) -> SessionStatus:
    return services.manager.status(params.session, peer.caller)


HANDLER = Read("status", status)
