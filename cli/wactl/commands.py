"""What each wactl subcommand does: one or a few calls on the blocking
:class:`wa_daemon.Client`, their results shown through :mod:`wactl.views`.

A command returns its exit code, or raises: a :class:`~wactl.exits.CliError`
for what wactl itself diagnoses, the client's errors for the rest
(:mod:`wactl.exits` maps both).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from wa_daemon import __version__
from wa_daemon.client import Client
from wa_daemon.message_types import Message, MessageReceived
from wa_daemon.protocol import End, SessionStatus, State

from . import render
from .exits import EXIT_OK, EXIT_SESSION_FAILED, EXIT_UNHEALTHY, EXIT_UNREACHABLE, CliError
from .views import ConnectView, Output, save_png

# connect waits for the first of these: connected is success, the rest end the attempt.
CONNECT_UNTIL = (State.CONNECTED, State.FAILED, State.LOGGED_OUT, State.STOPPED)


@dataclass
class Ctx:
    args: argparse.Namespace
    out: Output
    client: Client


def cmd_list(ctx: Ctx) -> int:
    ctx.out.items(ctx.client.list(ctx.args.state or None), render.status_table, "no sessions")
    return EXIT_OK


def cmd_status(ctx: Ctx) -> int:
    if ctx.args.session is None:
        return cmd_list(ctx)
    ctx.out.status(ctx.client.status(ctx.args.session))
    return EXIT_OK


def cmd_history(ctx: Ctx) -> int:
    transitions = ctx.client.history(ctx.args.session, ctx.args.limit)
    ctx.out.items(transitions, render.history_table, "no transitions")
    return EXIT_OK


def cmd_qr(ctx: Ctx) -> int:
    qr = ctx.client.qr(ctx.args.session)
    if ctx.args.png:
        save_png(qr, ctx.args.png, ctx.args.scale)
    if ctx.out.json:
        ctx.out.doc(qr)
        return EXIT_OK
    ctx.out.write(render.qr_text(qr.data, unicode=ctx.out.unicode))
    ctx.out.line(render.qr_caption(qr))
    if ctx.args.png:
        ctx.out.line(f"saved to {ctx.args.png}")
    return EXIT_OK


def cmd_pairing_code(ctx: Ctx) -> int:
    code = ctx.client.pairing_code(ctx.args.session)
    ctx.out.show(code, render.code_text(code))
    return EXIT_OK


def cmd_metrics(ctx: Ctx) -> int:
    metrics = ctx.client.metrics(prometheus=ctx.args.prometheus)
    if ctx.out.json:
        ctx.out.doc(metrics)
    elif ctx.args.prometheus:
        ctx.out.write(metrics.prometheus or "")
    else:
        ctx.out.line(render.metrics_table(metrics.samples))
    return EXIT_OK


def cmd_hosts(ctx: Ctx) -> int:
    listed = ctx.client.hosts()
    if ctx.out.json:
        ctx.out.doc(listed)
    else:
        ctx.out.line(render.hosts_table(listed))
    return EXIT_OK


def cmd_drain(ctx: Ctx) -> int:
    args = ctx.args
    result = ctx.client.drain(args.host, cancel=args.cancel)
    if not args.wait or args.cancel:
        if ctx.out.json:
            ctx.out.doc(result)
        else:
            ctx.out.line(f"{result.host}: {'draining' if result.draining else 'takes sessions again'}")
        return EXIT_OK
    deadline = time.monotonic() + args.timeout
    last = None
    while True:
        listed = ctx.client.hosts()
        info = next((h for h in listed.hosts if h.host == args.host), None)
        held = 0 if info is None else info.sessions
        if info is not None and info.draining and held != last and not ctx.out.json:
            ctx.out.line(f"{args.host}: draining, {held} session{'s' if held != 1 else ''} left")
            last = held
        if info is None or (info.draining and held == 0):
            if ctx.out.json:
                ctx.out.doc(info if info is not None else result)
            else:
                ctx.out.line(f"{args.host}: drained" if info is not None else f"{args.host}: gone from the fleet")
            return EXIT_OK
        if time.monotonic() >= deadline:
            raise CliError(
                "timeout", f"{args.host} still holds {held} sessions after {args.timeout:g} s",
                EXIT_SESSION_FAILED, {"host": args.host, "sessions": held},
            )
        time.sleep(0.5)


def cmd_health(ctx: Ctx) -> int:
    report = ctx.client.health()
    if ctx.out.json:
        ctx.out.doc(report)
    else:
        for check in report.checks:
            ctx.out.line(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.message}")
        ctx.out.line("healthy" if report.healthy else "unhealthy")
    if not report.healthy:
        failed = "; ".join(f"{c.name}: {c.message}" for c in report.checks if not c.ok)
        if not ctx.out.json:
            print(f"wactl: unhealthy: {failed}", file=sys.stderr)
        return EXIT_UNHEALTHY
    return EXIT_OK


def cmd_ping(ctx: Ctx) -> int:
    started = time.perf_counter()
    pong = ctx.client.ping()
    rtt_ms = round((time.perf_counter() - started) * 1e3, 3)
    if ctx.out.json:
        ctx.out.doc(
            {**msgspec.to_builtins(pong), "socket": ctx.client.socket_path, "rtt_ms": rtt_ms}
        )
    else:
        ctx.out.line(
            f"pong from {ctx.client.socket_path}: server time {render.iso(pong.server_time)}, {rtt_ms:.1f} ms"
        )
    return EXIT_OK


def cmd_version(ctx: Ctx) -> int:
    info = ctx.client.version()
    if ctx.out.json:
        ctx.out.doc({"client": __version__, **msgspec.to_builtins(info)})
    else:
        ctx.out.line(f"wactl {__version__}")
        ctx.out.line(
            f"wa-daemon {info.server} at {ctx.client.socket_path} (protocol {info.protocol}, driver {info.driver})"
        )
    return EXIT_OK


def cmd_disconnect(ctx: Ctx) -> int:
    ctx.out.status(ctx.client.disconnect(ctx.args.session))
    return EXIT_OK


def cmd_logout(ctx: Ctx) -> int:
    ctx.out.status(ctx.client.logout(ctx.args.session))
    return EXIT_OK


def cmd_delete(ctx: Ctx) -> int:
    deleted = ctx.client.delete(ctx.args.session)
    ctx.out.show(deleted, f"deleted {deleted.session}")
    return EXIT_OK


def cmd_simulate(ctx: Ctx) -> int:
    status = ctx.client.simulate(ctx.args.session, ctx.args.action)
    if ctx.out.json:
        ctx.out.doc(status)
    else:
        # The page acts asynchronously: the status is the one from just before it reacts.
        ctx.out.line(f"sent {ctx.args.action} to {status.session}")
        ctx.out.line(render.status_table([status]))
    return EXIT_OK


def cmd_send(ctx: Ctx) -> int:
    args = ctx.args
    sent = ctx.client.send_text(args.session, args.to, args.text, args.idempotency_key)
    ctx.out.show(sent, f"sent {sent.id} to {sent.to} ({render.ACKS.get(sent.ack, sent.ack)})")
    return EXIT_OK


def cmd_messages(ctx: Ctx) -> int:
    """The backlog after ``--after``; with ``--follow``, then every new message, each once
    and in order: the watch opens before the backlog is read, and a gap in what it
    delivers (a slow reader's dropped events) is filled from the inbox."""
    args, out, client = ctx.args, ctx.out, ctx.client
    cursor = args.after

    def show(message: Message) -> None:
        nonlocal cursor
        if out.json:
            out.doc(message)
        else:
            out.line(render.message_line(message))
        cursor = message.seq

    def backlog() -> None:
        while True:
            page = client.messages(args.session, after=cursor, limit=1000)
            for message in page.messages:
                show(message)
            if not page.messages:
                return

    if not args.follow:
        backlog()
        return EXIT_OK
    while True:
        with client.watch(args.session, messages=True) as stream:
            backlog()
            for event in stream:
                if isinstance(event, MessageReceived) and event.message.seq > cursor:
                    if event.message.seq > cursor + 1:
                        backlog()
                    else:
                        show(event.message)
            end = stream.end
        if end is not None and end.reason != "timeout":
            raise CliError(end.reason, f"the watch of {args.session!r} ended: {end.reason}", EXIT_SESSION_FAILED)


def end_doc(end: End) -> dict[str, Any]:
    return {"type": "end", "reason": end.reason, "status": end.status}


def cmd_watch(ctx: Ctx) -> int:
    args, out = ctx.args, ctx.out
    with ctx.client.watch(args.session, until=args.until, timeout=args.timeout, messages=args.messages) as stream:
        for event in stream:
            if out.json:
                out.doc(event)
            else:
                out.line(render.event_line(event))
        end = stream.end
    assert end is not None  # the iterator stops only once the daemon sent End
    if out.json:
        out.doc(end_doc(end))
    else:
        out.line(render.end_line(end, args.session))
    if end.reason == "shutdown":
        raise CliError("unavailable", "the daemon is shutting down", EXIT_UNREACHABLE)
    if not args.until or end.reason == "until":
        return EXIT_OK
    wanted = " or ".join(args.until)
    state = end.status.state.value if end.status is not None else "unknown"
    if end.reason == "deleted":
        message = f"session {args.session!r} was deleted before it reached {wanted}"
    else:
        message = f"session {args.session!r} did not reach {wanted} within {args.timeout:g} s (state {state})"
    raise CliError(
        end.reason, message, EXIT_SESSION_FAILED, {"session": args.session, "state": state}
    )


def session_ended(status: SessionStatus) -> CliError:
    verb = {
        State.FAILED: "failed",
        State.LOGGED_OUT: "was logged out",
        State.STOPPED: "was stopped",
    }
    message = f"session {status.session!r} {verb.get(status.state, 'is ' + status.state.value)}"
    if status.message:
        message += f": {status.message}"
    details = {
        "session": status.session,
        "state": status.state.value,
        "reason": status.reason,
        "message": status.message,
        "last_error": status.last_error,
    }
    return CliError(status.reason or status.state.value, message, EXIT_SESSION_FAILED, details)


def cmd_connect(ctx: Ctx) -> int:
    args, out = ctx.args, ctx.out
    status = ctx.client.connect(args.session, phone_number=args.phone, proxy=args.proxy)
    if args.no_wait:
        ctx.out.status(status)
        return EXIT_OK
    view = ConnectView(out, args.png, args.scale)
    if out.json:
        out.doc({"type": "connect", "status": status})
    view.status(status)
    if status.state == State.CONNECTED:
        return EXIT_OK
    with ctx.client.watch(args.session, until=CONNECT_UNTIL, timeout=args.timeout) as stream:
        for event in stream:
            view.event(event)
        end = stream.end
    assert end is not None  # the iterator stops only once the daemon sent End
    if out.json:
        out.doc(end_doc(end))
    final = end.status
    if end.reason == "until" and final is not None:
        if final.state == State.CONNECTED:
            return EXIT_OK
        raise session_ended(final)
    if end.reason == "shutdown":
        raise CliError("unavailable", "the daemon shut down during the wait", EXIT_UNREACHABLE)
    state = final.state.value if final is not None else "unknown"
    details = {"session": args.session, "state": state}
    if end.reason == "deleted":
        raise CliError(
            "deleted",
            f"session {args.session!r} was deleted during the wait",
            EXIT_SESSION_FAILED,
            details,
        )
    raise CliError(
        "timeout",
        f"session {args.session!r} did not connect within {args.timeout:g} s (state {state})",
        EXIT_SESSION_FAILED,
        details,
    )


COMMANDS: dict[str, Callable[[Ctx], int]] = {
    "connect": cmd_connect,
    "status": cmd_status,
    "list": cmd_list,
    "watch": cmd_watch,
    "disconnect": cmd_disconnect,
    "logout": cmd_logout,
    "delete": cmd_delete,
    "history": cmd_history,
    "qr": cmd_qr,
    "pairing-code": cmd_pairing_code,
    "metrics": cmd_metrics,
    "health": cmd_health,
    "hosts": cmd_hosts,
    "drain": cmd_drain,
    "ping": cmd_ping,
    "version": cmd_version,
    "simulate": cmd_simulate,
    "send": cmd_send,
    "messages": cmd_messages,
}
