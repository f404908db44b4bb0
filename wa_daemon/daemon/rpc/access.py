"""Who may see and touch which session (docs/security.md).

A session belongs to the uid whose ``connect`` created it (``owner_uid``). An
*admin* sees and touches every session: root, the daemon's own uid, the uids in
``admin_uids`` and the members of ``admin_group``. Anybody else is a *caller*
restricted to the sessions it owns.

The manager takes that decision as one value, ``caller``: None for an admin (no
restriction), else the peer's uid, compared with ``Session.owner_uid`` (an int
compare on the hot path). A session whose owner is None (created by a peer whose
credentials could not be read, or restored from a registry that had no owner)
is therefore visible to admins only.
"""

from __future__ import annotations

import grp
import os
import pwd

import structlog

from ..ops.config import Config

log = structlog.get_logger("wa_daemon.server")


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


def is_admin(config: Config, uid: int, gid: int) -> bool:
    """Whether the peer with these credentials (from SO_PEERCRED) is an admin."""
    if uid < 0:  # credentials could not be read: nobody in particular
        return False
    if uid == 0 or uid == os.geteuid() or uid in config.admin_uids:
        return True
    return config.admin_group is not None and in_group(config.admin_group, uid, gid)


def caller_of(config: Config, uid: int, gid: int) -> int | None:
    """The ``caller`` the manager filters by: None for an admin, else ``uid``."""
    return None if is_admin(config, uid, gid) else uid
