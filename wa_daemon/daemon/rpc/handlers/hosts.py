"""``hosts``: the fleet's hosts from their heartbeats (docs/cluster.md); alone, this host."""

from __future__ import annotations

from ....protocol import HostList, NoParams
from .base import Operation, Peer, Services


async def hosts(services: Services, params: NoParams, peer: Peer) -> HostList:
    return await services.manager.hosts()


HANDLER = Operation("hosts", hosts)
