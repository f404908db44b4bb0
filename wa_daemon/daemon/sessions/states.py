"""The session state machine's tables: which transitions exist, and which event takes which.

``TRANSITIONS`` is the single place transitions are allowed; ``EVENT_EDGES`` says
which of them each event of the machine (``machine.py``, events in ``events.py``)
may take. The machine raises on a transition either table refuses: that is a bug.
``docs/states.md`` is generated from both (``python -m wa_daemon.daemon.sessions.states``)
and a test keeps the two identical.

There are no self-loops. A new QR while ``waiting_qr`` is a refresh event the
session handles without a transition, which is what makes the old production
error "Invalid state transition from waiting_qr to waiting_qr" impossible.
"""

from __future__ import annotations

from typing import Final

from ...protocol import State

S = State

# from-state -> {to-state: why this edge exists}
TRANSITIONS: Final[dict[State, dict[State, str]]] = {
    S.STOPPED: {
        S.STARTING: "connect, or restore after a daemon restart",
        S.LOGGED_OUT: "logout requested: saved auth wiped",
    },
    S.STARTING: {
        S.WAITING_QR: "the page shows a login QR",
        S.WAITING_CODE: "the page needs a login and the session links by phone number: a pairing code is shown",
        S.AUTHENTICATING: "saved auth found; the app is loading",
        S.CONNECTED: "saved auth found; the app is shown",
        S.RECONNECTING: "the browser died or the page was lost while starting",
        S.FAILED: "launch error (proxy_unreachable, proxy_auth_failed: the session's proxy), WhatsApp blocks the device "
        "or the web version, or the session was found inactive",
        S.STOPPED: "disconnect, delete, shutdown, or fenced (several hosts: the lease went to another host)",
        S.LOGGED_OUT: "logout requested, or a linked profile relaunched to a QR (unlinked while no browser ran)",
    },
    S.WAITING_QR: {
        S.AUTHENTICATING: "the QR was scanned; the app is loading",
        S.CONNECTED: "the QR was scanned and the app is shown at once",
        S.RECONNECTING: "the browser died or the page was lost",
        S.FAILED: "qr_timeout, conflict, blocked, web_version_deprecated, or inactive",
        S.STOPPED: "disconnect, delete, shutdown, or fenced (several hosts: the lease went to another host)",
        S.LOGGED_OUT: "logout requested before linking",
    },
    S.WAITING_CODE: {
        S.AUTHENTICATING: "the pairing code was entered on the phone; the app is loading",
        S.CONNECTED: "the pairing code was entered and the app is shown at once",
        S.RECONNECTING: "the browser died or the page was lost",
        S.FAILED: "code_timeout, conflict, blocked, web_version_deprecated, or inactive",
        S.STOPPED: "disconnect, delete, shutdown, or fenced (several hosts: the lease went to another host)",
        S.LOGGED_OUT: "logout requested before linking",
    },
    S.AUTHENTICATING: {
        S.CONNECTED: "the app is shown",
        S.WAITING_QR: "the phone rejected the link; a new QR is shown",
        S.WAITING_CODE: "the phone rejected the link; a new pairing code is shown",
        S.RECONNECTING: "the browser died or the page was lost",
        S.FAILED: "conflict, blocked, web_version_deprecated, or inactive",
        S.LOGGED_OUT: "the phone unlinked the device, or logout requested",
        S.STOPPED: "disconnect, delete, shutdown, or fenced (several hosts: the lease went to another host)",
    },
    S.CONNECTED: {
        S.RECONNECTING: "the browser died or the connection was lost, or the browser is recycled (memory_limit)",
        S.LOGGED_OUT: "the phone unlinked the device, or logout requested",
        S.FAILED: "conflict without takeover, blocked, or web_version_deprecated",
        S.STOPPED: "disconnect, delete, idle timeout, shutdown, or fenced (several hosts: the lease went to another host)",
    },
    S.RECONNECTING: {
        S.WAITING_QR: "relaunched; the page shows a login QR (the session was not linked yet)",
        S.WAITING_CODE: "relaunched; a pairing code is shown (the session was not linked yet)",
        S.AUTHENTICATING: "relaunched; the app is loading",
        S.CONNECTED: "relaunched; the app is shown",
        S.FAILED: "max_reconnects (proxy_unreachable or proxy_auth_failed when the last relaunch failed at the "
        "proxy), launch error, conflict, blocked, web_version_deprecated or inactive",
        S.LOGGED_OUT: "the phone unlinked the device (also while no browser ran), or logout requested",
        S.STOPPED: "disconnect, delete, shutdown, or fenced (several hosts: the lease went to another host)",
    },
    S.FAILED: {
        S.STARTING: "connect (a new attempt)",
        S.STOPPED: "disconnect",
        S.LOGGED_OUT: "logout requested: saved auth wiped",
    },
    S.LOGGED_OUT: {
        S.STARTING: "connect (a new attempt, with a new QR)",
        S.STOPPED: "disconnect",
    },
}

# States in which a session owns a browser (or is about to): connect is a no-op there.
ACTIVE: Final = frozenset({S.STARTING, S.WAITING_QR, S.WAITING_CODE, S.AUTHENTICATING, S.CONNECTED, S.RECONNECTING})
# States from which connect begins a new attempt.
RESTARTABLE: Final = frozenset({S.STOPPED, S.FAILED, S.LOGGED_OUT})
# States that must carry a machine-readable reason.
NEEDS_REASON: Final = frozenset({S.FAILED, S.LOGGED_OUT})




def _to(sources: frozenset[State], *targets: State) -> dict[State, frozenset[State]]:
    return {src: frozenset(targets) for src in sorted(sources, key=list(State).index)}


_ALL = frozenset(State)
_LINKING = frozenset({S.STARTING, S.AUTHENTICATING, S.RECONNECTING})  # where a login phase may begin

# event (its class name in events.py or browser/base.py) -> {from-state: the states it
# may lead to}. An event in a state it does not list changes no state: it may still
# have effects (a QR refresh, a log line, a browser call), or be ignored there. Page
# events that end the browser (a timeout, a logout, a crash) take their edge when the
# browser is closed: ``BrowserClosed`` (or ``AuthWiped``, when the auth goes with it).
EVENT_EDGES: Final[dict[str, dict[State, frozenset[State]]]] = {
    # operations, under the session's lock
    "Begin": _to(RESTARTABLE, S.STARTING),
    "Disconnect": _to(_ALL - {S.STOPPED}, S.STOPPED),
    "IdleTimeout": _to(_ALL - {S.STOPPED}, S.STOPPED),
    "Inactive": _to(ACTIVE, S.FAILED),
    "Shutdown": _to(ACTIVE, S.STOPPED),
    "Fenced": _to(ACTIVE, S.STOPPED),  # several hosts: the lease is lost, the browser stopped
    "LogoutDone": _to(_ALL - {S.LOGGED_OUT}, S.LOGGED_OUT),
    # the runner
    "LaunchFailed": _to(frozenset({S.STARTING, S.RECONNECTING}), S.FAILED),
    "BrowserClosed": {**_to(ACTIVE - {S.RECONNECTING}, S.RECONNECTING, S.FAILED), S.RECONNECTING: frozenset({S.FAILED})},
    "AuthWiped": _to(ACTIVE, S.LOGGED_OUT),
    "RunnerCrashed": _to(ACTIVE, S.FAILED),
    "CodeGiven": _to(_LINKING, S.WAITING_CODE),
    # the page
    "QrShown": _to(_LINKING, S.WAITING_QR),
    "Loading": _to(frozenset({S.STARTING, S.WAITING_QR, S.WAITING_CODE, S.RECONNECTING}), S.AUTHENTICATING),
    "AppShown": _to(ACTIVE - {S.CONNECTED}, S.CONNECTED),
}


class IllegalTransition(AssertionError):
    """The machine tried a transition its tables refuse: a bug in the machine."""

    def __init__(self, event: str, from_state: State, to_state: State) -> None:
        super().__init__(f"{event} may not move a session from {from_state.value} to {to_state.value}")
        self.event = event
        self.from_state = from_state
        self.to_state = to_state


def is_allowed(from_state: State, to_state: State) -> bool:
    return to_state in TRANSITIONS[from_state]


def takes(event: str, from_state: State, to_state: State) -> bool:
    """Whether ``event`` may move a session from ``from_state`` to ``to_state``."""
    return to_state in EVENT_EDGES.get(event, {}).get(from_state, ()) and is_allowed(from_state, to_state)


def _events_of(src: State, dst: State) -> str:
    return ", ".join(f"`{event}`" for event, edges in EVENT_EDGES.items() if dst in edges.get(src, ()))


def render_markdown() -> str:
    """The transition table, with the events that take each edge, as Markdown for docs/states.md."""
    lines = [
        "| from | to | when | events |",
        "|---|---|---|---|",
    ]
    for src, edges in TRANSITIONS.items():
        for dst, why in edges.items():
            lines.append(f"| `{src.value}` | `{dst.value}` | {why} | {_events_of(src, dst)} |")
    return "\n".join(lines) + "\n"


# An event edge the transition table refuses would make the machine raise: refuse it at import.
_stray = [(e, s, d) for e, edges in EVENT_EDGES.items() for s, ds in edges.items() for d in ds if not is_allowed(s, d)]
assert not _stray, f"EVENT_EDGES has edges TRANSITIONS forbids: {_stray}"


if __name__ == "__main__":
    print(render_markdown(), end="")
