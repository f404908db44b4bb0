"""``qr``: the QR a session shows now; `not_found` outside its login phase."""

from __future__ import annotations

from ....protocol import QrCode, SessionParams
from .base import Peer, Read, Services


def qr(services: Services, params: SessionParams, peer: Peer) -> QrCode:
    return services.manager.qr(params.session, peer.caller)


HANDLER = Read("qr", qr)
