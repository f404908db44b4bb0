"""``pairing_code``: the code a session shows now; `not_found` outside its linking phase."""

from __future__ import annotations

from ....protocol import PairingCode, SessionParams
from .base import Peer, Read, Services


def pairing_code(services: Services, params: SessionParams, peer: Peer) -> PairingCode:
    return services.manager.pairing_code(params.session, peer.caller)


HANDLER = Read("pairing_code", pairing_code)
