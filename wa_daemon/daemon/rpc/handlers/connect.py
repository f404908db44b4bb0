"""``connect``: start a session unless it is on its way already (idempotent).

A new session belongs to the peer's uid (None when its credentials could not
be read, which the manager refuses); the options apply from the next attempt
on and are remembered."""

from __future__ import annotations

from ....protocol import ConnectParams, SessionStatus
from ...sessions.options import SessionOptions
from .base import Operation, Peer, Services


async def connect(services: Services, params: ConnectParams, peer: Peer) -> SessionStatus:
    credentials = peer.credentials
    return await services.manager.connect(
        params.session,
        owner_uid=credentials.uid if credentials is not None else None,
        options=SessionOptions.of(params),
        caller=peer.caller,
    )


HANDLER = Operation("connect", connect)
