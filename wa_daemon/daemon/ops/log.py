"""structlog set-up: JSON lines for journald when not on a TTY, readable console on a TTY.

The JSON path carries one ``rpc`` line per call at ``info``, so it is on every
RPC's way and kept lean (docs/performance.md has the figures):

- the timestamp's date and time are formatted once per second, not per line;
- the line is rendered straight to bytes (no str round trip);
- lines go to the file descriptor from :class:`LineWriter`, which inside the
  event loop writes all the lines of one loop pass with one ``write(2)``,
  instead of ``print`` and a flush per line (two ``write(2)`` each under
  PYTHONUNBUFFERED).

The lines themselves are unchanged: same keys, same order, same timestamp text.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import select
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, TextIO, get_args

import msgspec
import structlog
import structlog.tracebacks
import trio
from structlog.processors import NAME_TO_LEVEL
from structlog.typing import EventDict, WrappedLogger

from .config import Component

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# Lines buffered past this size are written at once instead of at the flusher's turn.
_FLUSH_AT = 1 << 16


# structlog's default shows every frame's locals: a request's params (a message body, a
# proxy password) or a QR would reach the log with an exception. Never.
_DICT_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


class _JsonLine:
    """The last processors of the JSON chain in one: ``timestamp`` (the text of
    ``TimeStamper(fmt="iso", utc=True)``), ``dict_tracebacks`` for lines that carry
    ``exc_info``, then the JSON rendering, as bytes."""

    def __init__(self) -> None:
        self._encode = msgspec.json.Encoder(enc_hook=str).encode
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> bytes:
        second, ns = divmod(time.time_ns(), 1_000_000_000)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        micro = ns // 1000
        # datetime.isoformat(), which TimeStamper uses, leaves out a zero fraction.
        event_dict["timestamp"] = f"{self._prefix}.{micro:06d}Z" if micro else f"{self._prefix}Z"
        if "exc_info" in event_dict:
            event_dict = _DICT_TRACEBACKS(logger, method_name, event_dict)
        return self._encode(event_dict)


class LineWriter(trio.abc.Instrument):
    """A structlog logger that writes rendered lines to a file descriptor.

    Inside a trio run, lines wait in a buffer until the end of the event loop's
    pass: the writer is also a trio instrument, and ``before_io_wait`` (called
    once per pass, before the loop polls for I/O or sleeps) writes them all with
    one ``write(2)``. Under load that is one call for every line of a pass
    instead of one per line; a lone line still leaves within microseconds. No
    task, timer or wake-up is involved. Lines leave whole and in order, and none
    stays behind: ``after_run`` writes what is left when the run ends, and
    outside the event loop (before and after the run, other threads) each line
    is written at once, after anything still buffered.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()
        self._lock = threading.Lock()  # lines may come from other threads too
        self._thread: int | None = None  # the thread whose trio run has this writer installed
        atexit.register(self.flush)  # belt and braces: a run that died without its after_run

    def msg(self, message: bytes) -> None:
        with self._lock:
            self._buf += message
            self._buf += b"\n"
            if len(self._buf) >= _FLUSH_AT or (threading.get_ident() != self._thread and not self._install()):
                self._write_buffer()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg

    def _install(self) -> bool:
        """Install this writer in the current thread's trio run; False outside one."""
        try:
            trio.lowlevel.add_instrument(self)
        except RuntimeError:
            return False  # not in a trio run's thread: the caller writes the line now
        self._thread = threading.get_ident()  # cheaper to compare per line than asking trio
        return True

    # trio instrument hooks; they must not raise (trio would drop the instrument).

    def before_io_wait(self, timeout: float) -> None:
        if self._buf:
            self.flush()

    def after_run(self) -> None:
        self._thread = None
        self.flush()

    def flush(self) -> None:
        """Write everything buffered. Never raises: if the descriptor is gone
        (journald stopped), there is nowhere left to write the lines to."""
        with self._lock:
            self._write_buffer()

    def _write_buffer(self) -> None:
        data, self._buf = self._buf, bytearray()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]  # a pipe may take a long batch in parts
            except BlockingIOError:
                # Somebody made the descriptor non-blocking: wait, as print() would block.
                poller = select.poll()
                poller.register(self._fd, select.POLLOUT)
                poller.poll()
            except OSError:
                return


class _TextLineWriter:
    """The same for a stream without a file descriptor (io.StringIO and friends)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def msg(self, message: bytes) -> None:
        self._stream.write(message.decode() + "\n")
        self._stream.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def _line_writer(stream: TextIO) -> LineWriter | _TextLineWriter:
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return _TextLineWriter(stream)
    stream.flush()  # whatever was printed before comes out before our first line
    return LineWriter(fd)


class _Component:
    """What a ``wa_daemon.<component>`` logger writes to: the shared writer, plus
    the component's level for :func:`_by_component`."""

    __slots__ = ("level", "writer")

    def __init__(self, writer: Any, level: int) -> None:
        self.writer = writer
        self.level = level

    def msg(self, message: Any) -> None:
        self.writer.msg(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def _by_component(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    # Bound loggers pass every level (a per-connection logger lives as long as its
    # connection, and a reload must reach it); this drops what is below the
    # current level of the logger's component. Only two debug calls exist, both rare.
    if NAME_TO_LEVEL.get(method_name, logging.INFO) < logger.level:
        raise structlog.DropEvent
    return event_dict


def configure(
    level: str = "info",
    levels: Mapping[str, str] | None = None,
    *,
    stream: TextIO | None = None,
    json: bool | None = None,
) -> None:
    """Set up structlog. ``levels`` maps a component (``server``, ``chromium``…:
    the logger ``wa_daemon.<component>``; ``daemon`` is ``wa_daemon`` itself) to
    its own level; the others log at ``level``. Called again on SIGHUP: the new
    levels apply at once to every logger, those bound before included."""
    global _current_writer
    levels = levels or {}
    writer: Any
    if stream is None and _current_writer is not None:
        writer = _current_writer  # a reload: keep the descriptor and what is buffered in it
        json = True if json is None else json
    else:
        stream = stream or sys.stdout
        if json is None:
            json = not stream.isatty()
        writer = _line_writer(stream) if json else structlog.PrintLogger(stream)
        if json:
            _current_writer = writer
    processors: list[Any] = [
        _by_component,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if json:
        processors.append(_JsonLine())
    else:
        processors += [structlog.processors.TimeStamper(fmt="iso", utc=True), structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)]
    # The same _Component per logger name across reloads, its level updated in
    # place: loggers bound before (one per connection) hold on to it.
    for name, component in _components.items():
        component.writer = writer
        component.level = _level_of(name, level, levels)

    def factory(*args: Any) -> _Component:
        name = args[0] if args else ""
        component = _components.get(name)
        if component is None:
            component = _components[name] = _Component(writer, _level_of(name, level, levels))
        return component

    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=factory,
        cache_logger_on_first_use=False,  # SIGHUP may change the levels later
    )


_current_writer: LineWriter | _TextLineWriter | None = None
_components: dict[str, _Component] = {}


def get_logger(component: Component) -> Any:
    """The logger of one component: the only way a daemon module gets one, so
    that every line's level follows ``log_levels`` for a name the config knows."""
    return structlog.get_logger(_NAMES[component])


_NAMES: dict[str, str] = {"daemon": "wa_daemon", **{c: f"wa_daemon.{c}" for c in get_args(Component) if c != "daemon"}}


def _level_of(name: str, level: str, levels: Mapping[str, str]) -> int:
    component = "daemon" if name == "wa_daemon" else name.removeprefix("wa_daemon.")
    return _LEVELS[levels.get(component, level)]
