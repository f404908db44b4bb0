"""``ping``: the daemon's clock, to check it answers."""

from __future__ import annotations

from ....protocol import NoParams, Pong
from ...sessions.machine import utcnow
from .base import Peer, Read, Services


def ping(services: Services, params: NoParams, peer: Peer) -> Pong:
    return Pong(utcnow())


HANDLER = Read("ping", ping)
