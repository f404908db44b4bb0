"""``status``: one session's status, from memory: the encoded ``SessionStatus``
the session keeps, sent as it is."""

from __future__ import annotations

import msgspec

from ....protocol import SessionParams
from .base import Peer, Read, Services


def status(services: Services, params: SessionParams, peer: Peer) -> msgspec.Raw:
    return services.manager.status_raw(params.session, peer.caller)


HANDLER = Read("status", status)
