"""``watch``: a snapshot of one session (or of every session the caller may
see), then its events, until it reaches a state in ``until``, the timeout, a
cancel, its deletion or the daemon's shutdown."""

from __future__ import annotations

import trio

from ....protocol import EndReason, SessionStatus, Snapshot, WatchParams
from ...sessions.hub import StreamEnd
from .base import Emit, Peer, Services, Stream


async def watch(
    services: Services, params: WatchParams, peer: Peer, emit: Emit, scope: trio.CancelScope
) -> tuple[EndReason, SessionStatus | None]:
    manager = services.manager
    sub, snapshots = manager.subscribe(params.session, params.until, peer.caller, messages=params.messages)
    final: StreamEnd | None = None
    try:
        with scope:
            for snap in snapshots:
                await emit(Snapshot(snap))
                if snap.qr is not None:
                    sub.mark_qr_sent(snap.qr, trio.current_time())
            with trio.move_on_after(params.timeout):
                while True:
                    item = await sub.next()
                    if isinstance(item, StreamEnd):
                        final = item
                        break
                    await emit(item)
            if final is None:
                final = StreamEnd("timeout", None)
    finally:
        manager.unsubscribe(sub)
    if final is None:  # the client cancelled the stream
        final = StreamEnd("cancelled", None)
    status = final.status
    if status is None and params.session is not None:
        status = manager.final_status(params.session, peer.caller)
    return final.reason, status


HANDLER = Stream("watch", watch)
