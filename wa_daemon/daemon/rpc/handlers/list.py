"""``list``: the sessions the caller may see, optionally only those in some states.

The result is the encoded ``SessionList`` the manager keeps between calls."""

from __future__ import annotations

import msgspec

from ....protocol import ListParams
from .base import Peer, Read, Services


def list_sessions(services: Services, params: ListParams, peer: Peer) -> msgspec.Raw:
    return services.manager.list_raw(params.states, peer.caller)


HANDLER = Read("list", list_sessions)
