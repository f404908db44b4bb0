"""Who asks the manager for something, as one explicit value (docs/security.md).

A session belongs to the uid whose ``connect`` created it (``owner_uid``). An
admin sees and touches every session; anybody else is restricted to the
sessions its uid owns. A peer whose credentials could not be read is nobody in
particular: it owns nothing, sees nothing and may create nothing. Who is an
admin is decided above this layer (``rpc/access.py``), from the peer's
credentials and the configuration; in-process callers (tests, tools) are
:data:`ADMIN`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Caller:
    uid: int | None  # the peer's uid; None for an admin (it does not matter) or unknown credentials
    admin: bool = False

    @classmethod
    def user(cls, uid: int) -> Caller:
        """A caller restricted to the sessions ``uid`` owns."""
        return cls(uid)

    @property
    def known(self) -> bool:
        """False for a peer whose credentials could not be read."""
        return self.admin or self.uid is not None

    def may_use(self, owner_uid: int | None) -> bool:
        """Whether this caller may see and touch a session owned by ``owner_uid``."""
        # An unknown caller (uid None) never matches, not even ownerless sessions.
        return self.admin or (self.uid is not None and self.uid == owner_uid)


ADMIN: Final = Caller(None, admin=True)
UNKNOWN: Final = Caller(None)
