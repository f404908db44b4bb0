"""Who may see and touch which session (docs/security.md).

A session belongs to the uid whose ``connect`` created it (``owner_uid``). An
*admin* sees and touches every session: root, the daemon's own uid, the uids in
``admin_uids`` and the members of ``admin_group``. Anybody else is a *caller*
restricted to the sessions it owns.

The manager takes that decision as one value, a :class:`Caller`: ``ADMIN`` (no
restriction), a uid's caller (compared with ``Session.owner_uid``, an int
compare on the hot path), or ``UNKNOWN`` for a peer whose credentials could not
be read: it sees no session, not even one whose owner is None (created before
owners were recorded), and may create none.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from ..ops.config import Config
from ..ops.log import get_logger
from ..sessions.caller import ADMIN, UNKNOWN, Caller

__all__ = ["ADMIN", "UNKNOWN", "Caller", "PeerCredentials", "caller_of", "in_group", "is_admin"]

log = get_logger("server")


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """A connected peer's identity, from SO_PEERCRED (``listener.peer_credentials``)."""

    pid: int
    uid: int
    gid: int


def in_group(group: str, uid: int, gid: int) -> bool:
    """Whether the peer (uid, primary gid from SO_PEERCRED) belongs to ``group``:
    its primary gid is the group's, or its user name is in the group's member
    list (/etc/group, or whatever NSS serves). Looked up now, not cached."""
    try:
        entry = grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
    except (KeyError, OverflowError):
        log.warning("admin_group_unknown", group=group)
        return False
    if gid == entry.gr_gid:
        return True
    if not entry.gr_mem:
        return False
    try:
        name = pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return False
    return name in entry.gr_mem


def is_admin(config: Config, peer: PeerCredentials | None) -> bool:
    """Whether the peer with these credentials is an admin; never one whose
    credentials could not be read."""
    if peer is None:
        return False
    uid = peer.uid
    if uid == 0 or uid == os.geteuid() or uid in config.admin_uids:
        return True
    return config.admin_group is not None and in_group(config.admin_group, uid, peer.gid)


def caller_of(config: Config, peer: PeerCredentials | None) -> Caller:
    """The :class:`Caller` the manager filters by."""
    if peer is None:
        return UNKNOWN
    return ADMIN if is_admin(config, peer) else Caller.user(peer.uid)
