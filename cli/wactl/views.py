"""Where wactl's output goes: :class:`Output` (stdout, human or JSON lines) and
:class:`ConnectView`, the live display of a ``connect`` wait.

The strings themselves come from :mod:`wactl.render`, which does no I/O.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from typing import Any, TextIO, TypeVar

import msgspec

from wa_daemon.protocol import (
    PairingCode,
    PairingCodeUpdated,
    QrCode,
    QrUpdated,
    SessionError,
    SessionStatus,
    Snapshot,
    State,
    StateChanged,
    WatchEvent,
)

from . import render
from .exits import EXIT_ERROR, CliError, StdoutClosed

_T = TypeVar("_T")


class Output:
    def __init__(self, stream: TextIO, json: bool) -> None:
        self.stream = stream
        self.json = json
        self.tty = stream.isatty()
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        self.unicode = encoding.startswith("utf")

    def write(self, text: str) -> None:
        try:
            self.stream.write(text)
            # Flushed at once: watch and connect are read live through pipes.
            self.stream.flush()
        except BrokenPipeError:
            raise StdoutClosed from None

    def line(self, text: str = "") -> None:
        self.write(text + "\n")

    def doc(self, obj: Any) -> None:
        """One JSON document on one line."""
        self.line(msgspec.json.encode(obj).decode())

    def show(self, result: Any, text: str) -> None:
        """A command's result: its JSON document, or ``text`` for a human."""
        if self.json:
            self.doc(result)
        else:
            self.line(text)

    def items(self, items: Sequence[_T], table: Callable[[Sequence[_T]], str], empty: str) -> None:
        """A list as one JSON array, or as a table, or ``empty`` when there is nothing."""
        self.show(items, table(items) if items else empty)

    def status(self, status: SessionStatus) -> None:
        """A status as a one-row table, or as its JSON document."""
        self.show(status, render.status_table([status]))


def save_png(qr: QrCode, path: str, scale: int) -> None:
    try:
        render.save_png(qr.data, path, scale)
    except OSError as exc:
        raise CliError(
            "io_error", f"cannot write {path}: {exc.strerror or exc}", EXIT_ERROR, {"path": path}
        ) from None


class ConnectView:
    """Shows a connect wait: a line per state change, the QR drawn again on each refresh.

    On a terminal the new QR replaces the old one in place; into a file or a pipe
    each QR is printed below the previous one, since there is nothing to redraw.
    """

    def __init__(self, out: Output, png: str | None, scale: int) -> None:
        self.out = out
        self.png = png
        self.scale = scale
        self.state: State | None = None
        self.qr_data: str | None = None
        self.code: PairingCode | None = None
        # Terminal rows written since the current QR was drawn; 0 when nothing can be redrawn.
        self.rows = 0

    def print(self, text: str) -> None:
        self.out.line(text)
        if self.rows:
            self.rows += self._rows_of(text)

    @staticmethod
    def _rows_of(text: str) -> int:
        width = max(1, shutil.get_terminal_size().columns)
        return sum(max(1, math.ceil(len(line) / width)) for line in text.split("\n"))

    def status(self, status: SessionStatus) -> None:
        if status.state != self.state:
            self.state = status.state
            if status.state not in (State.WAITING_QR, State.WAITING_CODE):
                self.rows = 0  # the login phase is over: its QR or code stays on screen as history
            if not self.out.json:
                self.print(render.state_line(status))
        if status.qr is not None:
            self.qr(status.qr)
        if status.pairing_code is not None:
            self.pairing_code(status.pairing_code)

    def qr(self, qr: QrCode) -> None:
        # A snapshot carries the QR of the moment, which the next qr event may repeat.
        if qr.data == self.qr_data:
            return
        self.qr_data = qr.data
        if self.png:
            save_png(qr, self.png, self.scale)
        if self.out.json:
            return
        caption = render.qr_caption(qr)
        if self.png:
            caption += f" Saved to {self.png}."
        self._redraw(render.qr_text(qr.data, unicode=self.out.unicode).rstrip("\n"), caption)

    def pairing_code(self, code: PairingCode) -> None:
        if code == self.code:
            return
        self.code = code
        if not self.out.json:
            self._redraw(render.code_text(code))

    def _redraw(self, *blocks: str) -> None:
        """Print ``blocks`` in place of the previous QR or code on a terminal."""
        if self.out.tty and self.rows:
            if self.rows < shutil.get_terminal_size().lines:
                self.out.write(f"\x1b[{self.rows}A\r\x1b[J")  # up to the old one, erase to the end
            else:
                self.out.write("\x1b[H\x1b[2J")  # it scrolled out of reach: clear the screen
        for block in blocks:
            self.out.line(block)
        if self.out.tty:
            self.rows = sum(self._rows_of(block) for block in blocks)

    def event(self, event: WatchEvent) -> None:
        if self.out.json:
            self.out.doc(event)
        if isinstance(event, (Snapshot, StateChanged)):
            self.status(event.status)
        elif isinstance(event, QrUpdated):
            self.qr(event.qr)
        elif isinstance(event, PairingCodeUpdated):
            self.pairing_code(event.code)
        elif isinstance(event, SessionError) and not self.out.json:
            self.print(f"{event.session}: error {event.code}: {render.cell(event.message)}")
