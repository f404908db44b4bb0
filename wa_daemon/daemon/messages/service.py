"""Messages of the sessions: what the pages report goes to the inbox and then the
watchers; sends wait for their session, keep its pace and are idempotent.

The layer above the sessions for everything about messages: the RPC handlers
``send_text`` and ``messages`` call it, the manager hands it what each session's
page reports (``SessionManager.on_message``), and the daemon runs its retention.
Message bodies never reach a log line: ids and lengths only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from ...errors import InvalidArgument, Unavailable
from ...message_types import MessageAck, MessagePage, MessageReceived, SentMessage, chat_id
from ..browser.base import AckChanged, MessageEvent, SendError
from ..ops.config import Config
from ..ops.log import get_logger
from ..sessions.caller import ADMIN, Caller
from ..sessions.manager import SessionManager
from .inbox import Inbox, InboxError, utc_from_epoch
from .pacing import Gate, Pacer, digest, gate

log = get_logger("messages")


class Messaging:
    def __init__(
        self, config: Config, manager: SessionManager, inbox: Inbox, *, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.manager = manager
        self.inbox = inbox
        self.wall_clock = wall_clock
        self.pacer = Pacer(config.send_min_interval)
        self._locks: dict[str, trio.Lock] = {}
        manager.on_message(self.record)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.pacer.interval = config.send_min_interval

    # -- what the pages report -----------------------------------------------------------

    def record(self, session: str, event: MessageEvent) -> None:
        """Write a message (or an ack) to the inbox, then tell the watchers."""
        try:
            if isinstance(event, AckChanged):
                updated = self.inbox.set_ack(session, event.id, event.ack)
                if updated is not None:
                    self.manager.hub.publish(MessageAck(session, updated.id, updated.seq, updated.ack))
                return
            message = self.inbox.add(session, event, self.wall_clock())
        except InboxError as exc:
            self.manager.metrics.inbox_errors.inc()
            log.error("inbox_write_failed", session=session, message_id=event.id, error=str(exc))
            return
        if message is None:
            return  # reported again (a reload, a sync): it is in the inbox already
        self.manager.metrics.messages_stored.labels("out" if message.from_me else "in").inc()
        log.info("message_stored", session=session, seq=message.seq, message_id=message.id,
                 from_me=message.from_me, kind=message.type, length=len(message.text))
        self.manager.hub.publish(MessageReceived(session, message))

    # -- reads -----------------------------------------------------------------------------

    def messages(self, session: str, after: int, limit: int, caller: Caller = ADMIN) -> MessagePage:
        self.manager.get(session, caller).touch()  # not_found, permission_denied as for any session read
        try:
            return self.inbox.page(session, after, limit)
        except InboxError as exc:
            raise Unavailable(str(exc), {"session": session}) from None

    # -- sending ---------------------------------------------------------------------------

    async def send_text(
        self, session_id: str, to: str, text: str, key: str | None = None, caller: Caller = ADMIN
    ) -> SentMessage:
        chat = chat_id(to)
        session = self.manager.get(session_id, caller)
        session.touch()
        mark = digest(chat, text)
        # One send at a time per session: the pace holds, and a retry under the same key
        # waits for the first and then finds its result.
        lock = self._locks.setdefault(session_id, trio.Lock())
        async with lock:
            begun = self.inbox.send(session_id, key) if key is not None else None
            if begun is not None:
                if begun.digest != mark:
                    raise InvalidArgument(
                        "this idempotency_key was used for another message", {"idempotency_key": key}
                    )
                if begun.result is not None:
                    return begun.result
            await self._until_connected(session_id)
            delay = self.pacer.delay(session_id, trio.current_time())
            if delay > 0:
                await trio.sleep(delay)
            session = self.manager.get(session_id, caller)  # it may have been deleted meanwhile
            try:
                message_id = begun.message_id if begun is not None else await session.new_message_id()
                if key is not None and begun is None:
                    self.inbox.begin_send(session_id, key, mark, message_id, self.wall_clock())
                sent = await session.send_text(chat, text, message_id)
            except (SendError, InboxError) as exc:
                raise Unavailable(f"cannot send: {exc}", {"session": session_id}) from None
            finally:
                self.pacer.sent(session_id, trio.current_time())
            result = SentMessage(session_id, sent.id, sent.chat, sent.ack, utc_from_epoch(sent.at))
            if key is not None:
                try:
                    self.inbox.finish_send(session_id, key, result)
                except InboxError as exc:
                    log.error("inbox_write_failed", session=session_id, message_id=sent.id, error=str(exc))
            log.info("message_sent", session=session_id, message_id=sent.id, length=len(text), keyed=key is not None)
            return result

    async def _until_connected(self, session_id: str) -> None:
        """Return once the session is connected; ``unavailable`` at once when it will not
        get there by itself, or after ``send_wait`` when it does not."""
        with trio.move_on_after(self.config.send_wait):
            while True:
                session = self.manager.get(session_id)
                decision = gate(session.state)
                if decision is Gate.GO:
                    return
                if decision is Gate.REFUSE:
                    raise Unavailable(
                        f"session {session_id!r} is {session.state.value}: it cannot send",
                        {"session": session_id, "state": session.state.value},
                    )
                await session.wait_changed()
        state = self.manager.get(session_id).state
        raise Unavailable(
            f"session {session_id!r} did not connect within {self.config.send_wait:g} s (state {state.value})",
            {"session": session_id, "state": state.value, "waited": self.config.send_wait},
        )

    # -- upkeep ----------------------------------------------------------------------------

    def forget(self, session: str) -> None:
        """A deleted session's inbox goes with it."""
        self._locks.pop(session, None)
        self.pacer.forget(session)
        try:
            self.inbox.forget(session)
        except InboxError as exc:
            log.error("inbox_write_failed", session=session, error=str(exc))

    def prune(self) -> int:
        retention = self.config.message_retention
        older = None if retention.max_age is None else self.wall_clock() - retention.max_age
        try:
            removed = self.inbox.prune(older_than=older, keep=retention.max_count)
        except InboxError as exc:
            log.error("inbox_prune_failed", error=str(exc))
            return 0
        if removed:
            log.info("inbox_pruned", removed=removed)
        return removed

    async def retention_loop(self) -> None:
        while True:
            self.prune()
            await trio.sleep(self.config.message_retention.interval)

