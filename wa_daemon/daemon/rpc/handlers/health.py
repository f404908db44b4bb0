"""``health``: the daemon monitor's checks (event loop, state directory, sessions)."""

from __future__ import annotations

from ....errors import Unavailable
from ....protocol import Health, NoParams
from .base import Operation, Peer, Services


async def health(services: Services, params: NoParams, peer: Peer) -> Health:
    if services.health is None:
        raise Unavailable("this daemon runs no health monitor")
    return await services.health()


HANDLER = Operation("health", health)
