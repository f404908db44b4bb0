"""``drain``: ask a host of the fleet to hand its sessions to the others (admins only;
docs/cluster.md). ``cancel``: it takes sessions again."""

from __future__ import annotations

from ....errors import PermissionDenied
from ....protocol import DrainParams, DrainResult
from .base import Operation, Peer, Services


async def drain(services: Services, params: DrainParams, peer: Peer) -> DrainResult:
    if not peer.caller.admin:
        raise PermissionDenied("only an admin may drain a host", {"host": params.host})
    return await services.manager.placement.drain(params.host, params.cancel)


HANDLER = Operation("drain", drain)
