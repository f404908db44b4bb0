"""``history``: a session's last transitions, oldest first."""

from __future__ import annotations

from ....protocol import History, HistoryParams
from .base import Peer, Read, Services


def history(services: Services, params: HistoryParams, peer: Peer) -> History:
    return History(params.session, services.manager.history(params.session, params.limit, peer.caller))


HANDLER = Read("history", history)
