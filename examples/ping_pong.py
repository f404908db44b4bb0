#!/usr/bin/env python3
"""Answer "ping" with "pong" through a linked session: a service on the durable inbox.

    python examples/ping_pong.py alice
    python examples/ping_pong.py alice --cursor-file /var/lib/pingpong/cursor --exit-after 1
    WA_DAEMON_SOCKET=/tmp/d.sock python examples/ping_pong.py alice

It reads the session's inbox from a cursor kept in a file, so a service that was
down (or restarted) answers what it missed, each message once, in order. It opens
the watch first and then reads the backlog, so nothing falls between the two;
a gap in the watch (a slow reader's dropped events) is read from the inbox.

Each answer is sent with an idempotency key made of the message's id: when the
service dies after sending and before saving its cursor, the retry after the
restart returns the first send instead of sending a second "pong".
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio

from wa_daemon import AsyncClient, Message, MessageReceived

WATCH_TIMEOUT = 86400.0  # the daemon's maximum; the stream is reopened when it ends


def say(text: str) -> None:
    print(text, flush=True)


class PingPong:
    def __init__(self, wa: AsyncClient, session: str, cursor_file: Path, exit_after: int | None) -> None:
        self.wa = wa
        self.session = session
        self.cursor_file = cursor_file
        self.cursor = int(cursor_file.read_text()) if cursor_file.exists() else 0
        self.left = exit_after  # answers still to give before exiting; None: run for ever

    def save(self, seq: int) -> None:
        self.cursor = seq
        tmp = self.cursor_file.with_suffix(".tmp")
        tmp.write_text(str(seq))
        os.replace(tmp, self.cursor_file)  # atomic: a crash leaves the old cursor or the new

    async def handle(self, message: Message) -> None:
        if not message.from_me and message.type == "chat" and message.text.strip().lower() == "ping":
            sent = await self.wa.send_text(self.session, message.chat, "pong", idempotency_key=f"pong-{message.id}")
            say(f"#{message.seq}: ping from {message.chat}, answered {sent.id}")
            if self.left is not None:
                self.left -= 1
        self.save(message.seq)

    async def backlog(self) -> None:
        while True:
            page = await self.wa.messages(self.session, after=self.cursor, limit=100)
            for message in page.messages:
                await self.handle(message)
                if self.left == 0:
                    return
            if not page.messages:
                return

    async def run(self) -> None:
        while self.left != 0:
            async with self.wa.watch(self.session, timeout=WATCH_TIMEOUT, messages=True) as events:
                await self.backlog()
                if self.left == 0:
                    return
                async for event in events:
                    if self.left == 0:
                        break
                    if not isinstance(event, MessageReceived) or event.message.seq <= self.cursor:
                        continue
                    if event.message.seq > self.cursor + 1:
                        await self.backlog()  # the watch skipped some: the inbox has them
                    else:
                        await self.handle(event.message)
            if events.end is not None and events.end.reason not in ("timeout", None):
                say(f"the watch ended: {events.end.reason}")
                return


async def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("session")
    p.add_argument("--socket", default=None, help="the daemon's socket (default: $WA_DAEMON_SOCKET or the usual path)")
    p.add_argument("--cursor-file", type=Path, default=None, help="where the cursor is kept (default: ./<session>.cursor)")
    p.add_argument("--exit-after", type=int, default=None, metavar="N", help="exit after N answers")
    args = p.parse_args(argv)
    cursor_file = args.cursor_file or Path(f"{args.session}.cursor")
    async with AsyncClient(args.socket) as wa:
        await PingPong(wa, args.session, cursor_file, args.exit_after).run()
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main, sys.argv[1:]))
