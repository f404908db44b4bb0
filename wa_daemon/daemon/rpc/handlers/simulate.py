"""``simulate``: play the phone's (or fate's) part on a scripted session."""

from __future__ import annotations

from ....protocol import SessionStatus, SimulateParams
from .base import Operation, Peer, Services


async def simulate(services: Services, params: SimulateParams, peer: Peer) -> SessionStatus:
    return await services.manager.simulate(params.session, params.action, peer.caller)


HANDLER = Operation("simulate", simulate)
